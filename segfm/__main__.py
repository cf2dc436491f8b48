"""``python -m segfm`` runs the segfm command line."""

from segfm.cli import main

if __name__ == "__main__":
    main()
