"""The whole EB-Diff-Train pipeline as a list of stages (docs/design.md, steps 1-8), above the
stages it runs (runners/) and the evaluation that scores them (evaluation/).

``settings`` resolves what the pipeline decides once (its config file, {exp}/pipeline/{doc}.yml);
``schedule`` holds the step loops of training to a plateau or a target; ``stages`` the stages in
order, each with its outputs and a "done" test, so a rerun reuses what an earlier run finished.
"""
