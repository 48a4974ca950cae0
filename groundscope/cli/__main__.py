"""`python -m groundscope.cli ...` (torchrun starts training processes this way)."""

from groundscope.cli import main

main()
