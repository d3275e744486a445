"""The canonical label set and the mappings from each corpus onto it."""
from __future__ import annotations

from collections.abc import Sequence

CANONICAL = ("neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")

# RAVDESS emotion code (file name field 3) -> canonical; calm folds into neutral.
RAVDESS = {"01": "neutral", "02": "neutral", "03": "happiness", "04": "sadness",
           "05": "anger", "06": "fear", "07": "disgust", "08": "surprise"}

# GoEmotions Ekman label ids (labels.txt order) -> canonical.
GOEMOTIONS = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "neutral", 5: "sadness", 6: "surprise"}

# IEMOCAP's usual 4-class protocol: excited merges into happiness; other codes are dropped.
IEMOCAP = {"neu": "neutral", "hap": "happiness", "exc": "happiness", "sad": "sadness", "ang": "anger"}

# TESS file name emotion -> canonical ("ps" is pleasant surprise).
TESS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "neutral": "neutral",
        "ps": "surprise", "sad": "sadness"}

# EMOVO file name emotion (Italian) -> canonical.
EMOVO = {"dis": "disgust", "gio": "happiness", "neu": "neutral", "pau": "fear", "rab": "anger",
         "sor": "surprise", "tri": "sadness"}

# DailyDialog emotion codes -> canonical (0 = no emotion).
DAILYDIALOG = {0: "neutral", 1: "anger", 2: "disgust", 3: "fear", 4: "happiness", 5: "sadness", 6: "surprise"}

# FER2013 (mini-Xception output order) -> canonical.
FER2013 = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")


def neutral_index(names: Sequence[str]) -> int | None:
    """Where `neutral` is in a label set (None for a set without it: no neutral-specific rule applies)."""
    return list(names).index("neutral") if "neutral" in names else None
