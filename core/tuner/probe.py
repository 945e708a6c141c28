"""The probe: a layer plan's acceptance rate predicted from simulated drafting rounds.

What it is: `Probe`, which holds the exact draft forwards of the base's greedy outputs and scores
a plan with one batched forward per output, cheap enough to compare many plans. What it is not:
a measurement (`measure.py` drafts for real against the played-back base) or the search that
decides which plans to probe (`search.py`, `tune.py`).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..settings import Group
from ..engine.decoder import Decoder, ForwardOptions, TreeAttention


class Probe:
    """A plan's drafting rounds simulated at every output position of the base's greedy outputs.

    A drafting round that starts at position p has exact context before p (calibration); its first
    proposal comes from the exact forward, and each later one feeds the previous token through the
    plan's fuzzy groups, attending to the exact K/V before p and the round's own fuzzy K/V. The
    probe runs such a round from every start p at once, teacher-forced on the base's output: the
    exact K/V of the whole sequence sit in the cache, then one forward runs all rounds' tokens as
    chains (TreeAttention: token p + j at its own position sees the exact slots before p, and the
    chain's tokens p..p+j). The round accepts the longest run of proposals that match the base's
    tokens; the mean over starts, per drafted token, predicts the acceptance rate. A plan costs one
    batched forward per reference instead of a drafting run, so many plans can be compared; each
    chain token's logits equal the engine's own draft step (a test checks this).
    """

    def __init__(self, draft: Decoder, references: Sequence[tuple[list[int], list[int]]], draft_len: int,
                 max_rounds: int = 0):
        """max_rounds > 0: start a round only every k-th position, k chosen so that at most that many run."""
        self.draft, self.draft_len, self.items = draft, draft_len, []
        chain = draft_len - 1  # fuzzy proposals per round after the exact first one
        total = sum(max(len(out) - draft_len + 1, 0) for _, out in references)
        stride = -(-total // max_rounds) if max_rounds > 0 else 1
        for prompt, out in references:
            seq = torch.tensor(list(prompt) + list(out), dtype=torch.long, device=draft.device)
            starts = torch.arange(len(prompt), len(seq) - draft_len + 1, stride, device=draft.device)
            if starts.numel() == 0:
                continue
            offsets = starts[:, None] + torch.arange(chain, device=draft.device)[None, :]  # [S, chain] positions
            cache = draft.new_cache(len(seq) + starts.numel() * chain)
            with torch.inference_mode():
                exact = draft.forward(seq, 0, cache, ForwardOptions(all_logits=True))
            first = exact[starts - 1].argmax(-1) == seq[starts]  # [S] the round's exact first proposal
            self.items.append((cache, seq, starts, offsets, first))

    @property
    def rounds(self) -> int:
        return sum(item[2].numel() for item in self.items)

    def logits(self, groups: Sequence[Group]) -> Iterator[torch.Tensor]:
        """Per reference, [starts, draft_len - 1, vocab]: each round's fuzzy proposals, teacher-forced."""
        for cache, seq, starts, offsets, _ in self.items:
            length, (n, chain) = cache.length, offsets.shape
            if chain == 0:
                yield torch.zeros(n, 0, self.draft.cfg.vocab_size)
                continue
            node = torch.arange(n * chain)
            visible = (node[:, None] // chain == node[None, :] // chain) & (node[None, :] <= node[:, None])
            tree = TreeAttention(offsets.reshape(-1).cpu(), visible, starts.repeat_interleave(chain).cpu())
            with torch.inference_mode():
                logits = self.draft.forward(seq[offsets.reshape(-1)], length, cache,
                                            ForwardOptions(groups=groups, all_logits=True, tree=tree))
            cache.crop(length)
            yield logits.view(n, chain, -1)

    def acceptance(self, groups: Sequence[Group]) -> float:
        """Predicted acceptance rate: accepted proposals per drafted token, over all simulated rounds."""
        accepted = 0
        for logits, (_, seq, _, offsets, first) in zip(self.logits(groups), self.items):
            match = torch.cat([first[:, None], logits.argmax(-1) == seq[offsets + 1]], dim=1)  # [S, draft_len]
            accepted += int(match.long().cumprod(1).sum())
        return accepted / max(self.rounds * self.draft_len, 1)
