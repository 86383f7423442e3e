"""Stitched TA-EB tickets (docs/design.md, step 6): one network per timestep region.

Like improved-diffusion's respacing wrapper, a thin module routes each call to the ticket
whose region [lo, hi) holds t. Samplers ask ``for_timestep(i)`` with the host-side step index,
so routing needs no device-to-host copy; ``forward`` routes a mixed batch per element.
"""
import torch.nn as nn

from models.tiling import check_regions


class StitchedTickets(nn.Module):
    def __init__(self, tickets, regions, num_timesteps):
        super().__init__()
        check_regions(regions, num_timesteps)
        self.tickets = nn.ModuleList(tickets)
        self.regions = [(int(lo), int(hi)) for lo, hi in regions]
        self.num_timesteps = num_timesteps
        self._lookup = [0] * num_timesteps
        for k, (lo, hi) in enumerate(self.regions):
            for t in range(lo, hi):
                self._lookup[t] = k

    def for_timestep(self, t):
        """The ticket for integer timestep t."""
        return self.tickets[self._lookup[int(t)]]

    def forward(self, x, t):
        if len(self.tickets) == 1:
            return self.tickets[0](x, t)
        out = None
        for k, (lo, hi) in enumerate(self.regions):
            sel = ((t >= lo) & (t < hi)).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            y = self.tickets[k](x.index_select(0, sel), t.index_select(0, sel))
            if out is None:
                out = x.new_empty((x.shape[0],) + tuple(y.shape[1:]), dtype=y.dtype)
            out.index_copy_(0, sel, y)
        return out
