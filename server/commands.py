"""The model-management commands: `modelyard pull | add | models | doctor`.

Each prints what it decided and why; each that edits models.yaml checks the whole registry as the
server will read it first (server/models_file.py). server/__main__.py only dispatches here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from server.settings import Settings

COMMANDS = {"pull": "download a model from the Hugging Face Hub and add it to models.yaml",
            "add": "add a local GGUF file or model directory to models.yaml",
            "models": "list models.yaml, or (--discover) the models already on this machine",
            "doctor": "show the GPU, driver, engines with GPU support and the budget this install would use"}


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "pull":
        parser.add_argument("reference", metavar="REPO[:QUANT|:FILE]",
                            help="a Hub repository, e.g. bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M")
        parser.add_argument("--revision", help="a branch, tag or commit (default: main)")
        parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                            help="also fetch files matching this pattern (e.g. '*.bin')")
        parser.add_argument("--dry-run", action="store_true", help="print the estimate and plan, download nothing")
    if name in ("pull", "add"):
        if name == "add":
            parser.add_argument("target", type=Path, metavar="PATH", help="a GGUF file or a model directory")
        parser.add_argument("--id", dest="model_id", help="the model's id in models.yaml (default: from its name)")
        parser.add_argument("--no-add", action="store_true", help="do not edit models.yaml")
    if name == "models":
        parser.add_argument("--discover", action="store_true",
                            help="list models in the Hugging Face cache, Ollama's store and LM Studio's folder")
        parser.add_argument("--add", action="append", default=[], metavar="NAME", dest="add_names",
                            help="with --discover: add this discovered model (its NAME column); repeatable")
        parser.add_argument("--add-all", action="store_true", help="with --discover: add every servable model")
    if name in ("models", "doctor"):
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(command: str, args: argparse.Namespace, settings: Settings) -> int:
    from server.formats import FormatError
    from server.hub import HubError
    from server.registry import RegistryError

    try:
        return {"pull": pull, "add": add, "models": models, "doctor": doctor}[command](args, settings)
    except (HubError, FormatError, RegistryError) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 1


# ---- pull -----------------------------------------------------------------------------------

def pull(args: argparse.Namespace, settings: Settings) -> int:
    from server import hub
    from server.formats import detect, model_name

    hub.go_online()
    ref = hub.Reference.parse(args.reference)
    remote = hub.Hub()
    print(f"asking {hub.endpoint()} about {ref.repo} ...", flush=True)
    selection = remote.inspect(ref, args.revision, tuple(args.include))
    print(f"{ref.repo} @ {selection.revision[:12]}: {len(selection.files)} files, {_size(selection.total_bytes)}")
    for f in selection.files:
        role = " (vision projector)" if f.path == selection.projector else ""
        print(f"  {f.path:60} {_size(f.size):>10}{role}")
    if selection.kind == "gguf" and len(selection.available) > 1:
        print(f"  quantizations here: {', '.join(selection.available)}")
    default_id = model_name(ref.repo.split("/")[1].removesuffix("-GGUF").removesuffix("-gguf"))
    if selection.kind == "gguf" and selection.model_file:
        default_id += ":" + model_name(hub.quant_of(selection.model_file))
    with tempfile.TemporaryDirectory(prefix="modelyard-pull-") as staging:
        staged = remote.stage(selection, Path(staging))
        detected = detect(staged)
        if selection.projector:  # the estimate counts the projector the model will be served with
            detected = dataclasses.replace(detected, projector=Path(staging) / selection.projector)
        _print_forecast(detected.entry(args.model_id or default_id), settings)
    if args.dry_run:
        print("dry run: nothing downloaded")
        return 0
    local = remote.download(selection)
    detected = detect(local)
    print(f"downloaded to {local}")
    if selection.projector:
        detected = dataclasses.replace(detected, projector=remote.projector_path(selection))
        print(f"vision projector: {detected.projector} (served as options.mmproj: chats take images)")
    if args.no_add:
        return 0
    return _add_entry(detected, settings, args.model_id or default_id, f"Pulled from {ref} ({selection.revision[:12]}).")


# ---- add ------------------------------------------------------------------------------------

def add(args: argparse.Namespace, settings: Settings) -> int:
    from server.formats import detect, model_name

    target = args.target.expanduser().resolve()
    detected = detect(target)
    name = target.name.removesuffix(".gguf") if target.is_file() else target.name
    model_id = args.model_id or model_name(name)
    print(f"{target}: {detected.backend} ({detected.kind})")
    _print_forecast(detected.entry(model_id), settings)
    if args.no_add:
        return 0
    return _add_entry(detected, settings, model_id, f"Added from {target}.")


# ---- models ---------------------------------------------------------------------------------

def models(args: argparse.Namespace, settings: Settings) -> int:
    if not args.discover:
        if args.add_names or args.add_all:
            print("modelyard: --add and --add-all go with --discover", file=sys.stderr)
            return 2
        return _list_registry(args, settings)
    from server.discovery import discover
    from server.models_file import ModelsFile

    found = discover()
    declared = ModelsFile(settings.models).paths()
    if args.json:
        print(json.dumps([{"source": f.source, "name": f.name, "path": str(f.path), "size_bytes": f.size_bytes,
                           "backend": f.detected.backend if f.detected else None, "problem": f.problem,
                           "in_registry": f.path.resolve() in declared} for f in found], indent=2))
    else:
        print(f"{'SOURCE':12} {'NAME':48} {'BACKEND':15} {'SIZE':>10}  STATUS")
        for f in found:
            status = ("in models.yaml" if f.path.resolve() in declared else "can add") if f.detected else f.problem
            print(f"{f.source:12} {f.name:48} {f.detected.backend if f.detected else '-':15} "
                  f"{_size(f.size_bytes):>10}  {status}")
        if not found:
            print("(no models found in the Hugging Face cache, Ollama's store or LM Studio's folder)")
    wanted = [f for f in found if f.detected and (args.add_all or f.name in args.add_names)]
    unknown = set(args.add_names) - {f.name for f in found}
    if unknown:
        print(f"modelyard: not discovered: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1
    from server.formats import model_name

    status = 0
    for f in wanted:
        if f.path.resolve() in ModelsFile(settings.models).paths():
            continue
        wanted_id = model_name(f.name.removesuffix(".gguf").split("/")[-1] if f.source != "ollama" else f.name)
        status |= _add_entry(f.detected, settings, wanted_id, f"Found in {f.source} as {f.name} (not copied).")
    return status


def _list_registry(args: argparse.Namespace, settings: Settings) -> int:
    from server.app import allowed_model_dirs
    from server.registry import load_registry

    registry = load_registry(settings.models, allowed_model_dirs(settings))
    rows = [{"id": s.id, "backend": s.backend, "serves": sorted(c.value for c in s.capabilities),
             "path": str(getattr(s, "path", "") or ""), "aliases": list(s.aliases)} for s in registry]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':32} {'BACKEND':15} {'SERVES':32} PATH")
    for row in rows:
        print(f"{row['id']:32} {row['backend']:15} {','.join(row['serves']):32} {row['path']}")
    return 0


# ---- doctor ---------------------------------------------------------------------------------

def doctor(args: argparse.Namespace, settings: Settings) -> int:
    from server import doctor as checkup

    facts = checkup.report(settings)
    print(json.dumps(facts, indent=2) if args.json else checkup.render(facts))
    return 0


# ---- shared ---------------------------------------------------------------------------------

def _print_forecast(entry: dict[str, Any], settings: Settings) -> None:
    """The engine's estimate for this entry and where the arbiter would put it."""
    from pydantic import ValidationError

    from server.forecast import Room, forecast, server_snapshot
    from server.registry import parse_spec

    try:
        spec = parse_spec(entry)
    except ValidationError as exc:
        print(f"no estimate: the entry is not valid ({exc.errors()[0]['msg']})")
        return
    room = Room.of(settings, server_snapshot(settings))
    print(forecast(spec, room).describe(room))


def _add_entry(detected, settings: Settings, model_id: str, comment: str) -> int:
    from server.app import allowed_model_dirs
    from server.models_file import ModelsFile
    from server.registry import RegistryError

    registry_file = ModelsFile(settings.models)
    existing = detected.path.resolve() in registry_file.paths()
    if existing:
        print(f"{detected.path} is already in {settings.models}")
        return 0
    entry = detected.entry(registry_file.unique_id(model_id))
    try:
        registry_file.add(entry, allowed_model_dirs(settings), comment=comment)
    except RegistryError as exc:
        raise RegistryError(f"{exc} (models.yaml left unchanged; set MODELYARD_MODEL_DIRS to allow it)"
                            if "outside the allowed" in str(exc) else str(exc)) from None
    options = f" {json.dumps(entry['options'])}" if entry.get("options") else ""
    print(f"added {entry['id']} to {settings.models}: backend {entry['backend']}{options}, path {entry['path']}")
    return 0


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
