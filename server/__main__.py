"""CLI: modelyard serve | ps | plan | unload | events. Thin: flags mirror the settings model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing

import httpx

from server import commands as model_commands
from server.settings import Settings


def _flag_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
        return _flag_type(args[0])
    return annotation if annotation in (int, float) else str


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting: --budget-mb mirrors MODELYARD_BUDGET_MB, and so on."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=field.description)
        else:
            parser.add_argument(flag, type=_flag_type(field.annotation), default=None, help=field.description)


def settings_from(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**given)


def serve(settings: Settings) -> int:
    from server.app import ConfigError, create_app
    from server.listener import uvicorn_server
    from server.registry import RegistryError

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app = create_app(settings)
    except (RegistryError, ConfigError) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    uvicorn_server(app, settings).run()
    return 0


def _client(settings: Settings) -> httpx.Client:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    return httpx.Client(base_url=f"http://{host}:{settings.port}", headers=headers, timeout=30)


def ps(settings: Settings) -> int:
    with _client(settings) as client:
        snapshot = client.get("/admin/ps").raise_for_status().json()
    print(f"budget {snapshot['budget_mb']:.0f} MiB, used {snapshot['used_mb']:.0f} MiB, "
          f"waiting {snapshot['waiting']}; warm tier {snapshot['parked_mb']:.0f} of {snapshot['ram_budget_mb']:.0f} MiB")
    print(f"{'MODEL':32} {'BACKEND':14} {'STATE':10} {'MiB':>8} {'PID':>8} {'LEASES':>6}  {'EXPIRES':10} PLACEMENT")
    for r in snapshot["residents"]:
        expires = "never" if r["expires_in_s"] is None else f"in {r['expires_in_s']:.0f}s"
        if r["refcount"]:
            expires = "in use"
        print(f"{r['model']:32} {r['backend']:14} {r['state']:10} {r['memory_mb']:8.0f} {r['pid'] or '-':>8} "
              f"{r['refcount']:6}  {expires:10} {r['placement']}")
    for p in snapshot["parked"]:  # in system RAM, off the device: the next request skips the disk
        print(f"{p['model']:32} {p['backend']:14} {'parked':10} {p['memory_mb']:8.0f} {'-':>8} {0:6}  "
              f"{p['form']:10} {p['placement']}")
    return 0


def plan(settings: Settings, model: str | None, as_json: bool) -> int:
    """The dry run: what a request would lead to now, for one model or the whole registry."""
    with _client(settings) as client:
        response = client.get("/admin/plan", params={"model": model} if model else {})
    if response.status_code != 200:
        print(f"modelyard: {response.json()['error']['message']}", file=sys.stderr)
        return 1
    body = response.json()
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    for report in body["models"] if model is None else [body]:
        print(describe_plan(report))
    return 0


def describe_plan(r: dict) -> str:
    """A dry-run report as lines a person reads."""
    lines = [f"{r['model']} ({r['backend']}): {r['state']}, would load from {r['source']}"]
    if r.get("verdict") == "never":
        return "\n".join([*lines, f"  never fits: {r['reason']}", *_ladder_lines(r)])
    estimate = ", ".join(f"{k.removesuffix('_mb').replace('_', ' ')} {v:g}" for k, v in r["estimate"].items()
                         if v and k != "total_mb")
    lines.append(f"  placement {r['placement']}: {r['need_mb']:.0f} MiB on the device ({estimate})")
    if r["verdict"] == "resident":
        return "\n".join([*lines, "  resident now: served at once", *_ladder_lines(r)])
    lines.append(f"  budget {r['budget_mb']:.0f} MiB, used {r['used_mb']:.0f}; fits now: {'yes' if r['fits_now'] else 'no'}")
    for label, key in (("evict", "evict"), ("park in RAM", "park"), ("drop", "drop"), ("drain", "drain")):
        if r.get(key):
            lines.append(f"  {label}: {', '.join(r[key])}")
    admission = r.get("admission") or {}
    if admission.get("action") == "hold":
        lines.append(f"  waits behind the resident models' work (aging bound in {admission['wake_in_s']}s)")
    basis = "measured" if r.get("load_seen") else "estimated"
    lines.append(f"  expected wait {r['expected_wait_s']:.1f}s (load {r['expected_load_s']:.1f}s, {basis})")
    return "\n".join([*lines, *_ladder_lines(r)])


def _ladder_lines(r: dict) -> list[str]:
    lines = []
    if len(r["ladder"]) > 1:
        lines.append("  fit ladder:")
        for rung in r["ladder"]:
            mark = "*" if rung["placement"] == r.get("placement") else " "
            lines.append(f"   {mark} {rung['placement']:32} {rung['need_mb']:8.0f} MiB  "
                         f"{'fits' if rung['fits'] else 'too large'}")
    return lines


def unload(settings: Settings, model: str) -> int:
    with _client(settings) as client:
        response = client.post("/admin/unload", json={"model": model})
    if response.status_code != 200:
        print(f"modelyard: {response.json()['error']['message']}", file=sys.stderr)
        return 1
    print(json.dumps(response.json()))
    return 0


def events(settings: Settings, as_json: bool) -> int:
    """Follow the arbiter's event stream until interrupted."""
    from server.eventlog import follow

    with _client(settings) as client, client.stream("GET", "/admin/events",
                                                    timeout=httpx.Timeout(30, read=None)) as response:
        if response.status_code != 200:
            response.read()
            print(f"modelyard: {response.json()['error']['message']}", file=sys.stderr)
            return 1
        try:
            follow(response.iter_lines(), sys.stdout, as_json)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard", description="Local OpenAI-compatible model server.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "start the server"), ("ps", "list resident and parked models"),
                            ("plan", "show what a request for a model would lead to (a dry run)"),
                            ("unload", "unload a model now (and drop its parked copy)"),
                            ("events", "follow loads, swaps and evictions as they happen")):
        sub = commands.add_parser(name, help=help_text)
        add_settings_flags(sub)
        if name == "unload":
            sub.add_argument("model")
        if name == "plan":
            sub.add_argument("model", nargs="?", help="a model id or alias")
            sub.add_argument("--all", action="store_true", help="every model in the registry")
            sub.add_argument("--json", action="store_true", help="the raw /admin/plan answer")
        if name == "events":
            sub.add_argument("--json", action="store_true", help="every message of /admin/events as a JSON line")
    for name, help_text in model_commands.COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        add_settings_flags(sub)
        model_commands.add_arguments(name, sub)
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if args.command in model_commands.COMMANDS:  # pull, add, models, doctor: server/commands.py
        return model_commands.run(args.command, args, settings)
    if args.command == "serve":
        return serve(settings)
    if args.command == "ps":
        return ps(settings)
    if args.command == "plan":
        if bool(args.model) == bool(args.all):
            parser.error("plan takes a model id, or --all")
        return plan(settings, args.model, args.json)
    if args.command == "events":
        return events(settings, args.json)
    return unload(settings, args.model)


if __name__ == "__main__":
    sys.exit(main())
