"""``python -m instruction_vit`` = ``ivit`` (what ``torchrun -m instruction_vit train ...`` launches)."""

from .cli import main

main()
