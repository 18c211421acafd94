import random

import mindspore as ms
import numpy as np


def set_seed(seed: int) -> None:
    """Seeds Python, numpy and MindSpore so sampling in generate() is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)
