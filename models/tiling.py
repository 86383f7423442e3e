"""How TA-EB timestep regions must tile [0, T) (pure Python: the config reads it without torch)."""


def check_regions(regions, num_timesteps, where="regions"):
    """Regions [(lo, hi)] must tile [0, T) without gap or overlap (in any order)."""
    spans = sorted((int(lo), int(hi)) for lo, hi in regions)
    if not spans:
        raise ValueError(f"{where}: no regions")
    pos = 0
    for lo, hi in spans:
        if lo >= hi:
            raise ValueError(f"{where}: empty region [{lo}, {hi})")
        if lo > pos:
            raise ValueError(f"{where}: timesteps [{pos}, {lo}) are not covered")
        if lo < pos:
            raise ValueError(f"{where}: region [{lo}, {hi}) overlaps the previous one")
        pos = hi
    if pos != num_timesteps:
        raise ValueError(f"{where}: regions end at {pos}, expected {num_timesteps}")
    return spans
