"""``llmcore models``: the ready-trained models bundled with llmcore, usable by name as ``--model NAME``.

Prints one block per model: name, task, parameters, size on disk, its measured figures and the command that
trained it (all from the package's ``bundled/models.json``; nothing is loaded). ``--json`` prints the index
itself. A local directory of the same name wins over a bundled name wherever ``--model`` is read.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the bundled ready-trained models",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the index as JSON")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def run(args: argparse.Namespace) -> int:
    from ..bundled import BUNDLED_DIR, bundled_models

    models = bundled_models()
    if args.json:
        sys.stdout.write(json.dumps(models, ensure_ascii=False, indent=2) + "\n")
        return 0
    if not models:
        print(f"no bundled models in {BUNDLED_DIR}")
        return 0
    for name, m in models.items():
        metrics = ", ".join(f"{k} {v}" for k, v in m.get("metrics", {}).items())
        print(f"{name}  ({m.get('task', '?')})  {m.get('parameters', 0) / 1e6:.1f} M parameters, "
              f"{_size(m.get('bytes', 0))}")
        for key, text in (("", m.get("description", "")), ("metrics: ", metrics), ("trained: ", m.get("trained", "")),
                          ("command: ", m.get("command", "")), ("try: ", m.get("try", ""))):
            if text:
                print(f"    {key}{text}")
    return 0
