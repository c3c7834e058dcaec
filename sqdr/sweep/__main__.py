"""``python -m sqdr.sweep STUDY.yaml --worker_index I``: how ``sqdr sweep --workers N`` starts workers 1..N-1."""

import sys

from sqdr.__main__ import main

main(["sweep", *sys.argv[1:]])
