#!/usr/bin/env python
"""Write FrozenLake-style MVoT traces as MDS shards. Same as `blt prep gridworld`.

    python data_prep/prep_gridworld.py --tokenizer VQ_RUN_OR_EXPORT --out URI --traces N
        [--val-traces N] [--size 4] [--max-moves 6] [--no-images] [--seed S] [--overwrite]

Each trace: a text instruction with the lake's image, the moves, a state image after every move
(unless --no-images), and whether the agent reaches the goal. Images are coded by the tokenizer
(`blt train vq_image_tokenizer_tiny`); a code c is stored as the bytes 0xFF, c. The logic lives in
blt_scale/data/prep_gridworld.py and blt_scale/data/gridworld.py.
"""

import sys

from blt_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "gridworld", *sys.argv[1:]]))
