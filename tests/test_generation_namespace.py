"""Code written against transformers.generation imports from mindone.transformers.generation: every public name
of transformers' module (read at test time) is here, with transformers' signature, except the ones listed in
docs/generation.md with their reason."""

import inspect
import re
from pathlib import Path

import transformers.generation as theirs

import mindone.transformers.generation as ours

ABSENT = {  # name -> why (the same list is in docs/generation.md)
    **dict.fromkeys(["BeamSampleEncoderDecoderOutput", "BeamSearchEncoderDecoderOutput", "GenerateBeamEncoderDecoderOutput",
                     "GenerateEncoderDecoderOutput", "GreedySearchEncoderDecoderOutput", "SampleEncoderDecoderOutput",
                     "ContrastiveSearchEncoderDecoderOutput"], "encoder-decoder models"),  # fmt: skip
    **dict.fromkeys(["AlternatingCodebooksLogitsProcessor", "WhisperTimeStampLogitsProcessor"], "audio models"),
    **dict.fromkeys(["ContrastiveSearchDecoderOnlyOutput", "Constraint", "ConstraintListState", "DisjunctiveConstraint",
                     "PhrasalConstraint", "ConstrainedBeamSearchScorer", "BeamScorer", "BeamHypotheses",
                     "beam_constraints", "beam_search"], "moved to the Hub by transformers 4.57"),  # fmt: skip
}


def public(module) -> set:
    return {name for name in dir(module) if not name.startswith("_")}


def test_every_public_name_is_importable_unless_listed():
    missing = public(theirs) - public(ours)
    assert missing == set(ABSENT), f"missing but not listed: {sorted(missing - set(ABSENT))}; listed but present: " \
                                   f"{sorted(set(ABSENT) - missing)}"


def test_the_absent_names_are_listed_in_the_generation_guide():
    guide = (Path(__file__).resolve().parent.parent / "docs" / "generation.md").read_text()
    listed = set(re.findall(r"`(\w+)`", guide.split("## The generation namespace")[1]))
    assert set(ABSENT) <= listed


def test_signatures_are_transformers():
    different = []
    for name in sorted(public(theirs) & public(ours)):
        mine, original = getattr(ours, name), getattr(theirs, name)
        if mine is original or not inspect.isclass(original) and not inspect.isfunction(original):
            continue
        if _parameters(mine) != _parameters(original):
            different.append(name)
    assert different == []


def _parameters(obj) -> list:
    target = obj.__init__ if inspect.isclass(obj) else obj
    return [p.name for p in inspect.signature(target).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
