"""CLI: modelyard serve | ps | unload. Thin: flags mirror the settings model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing

import httpx

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
          f"waiting {snapshot['waiting']}")
    print(f"{'MODEL':32} {'BACKEND':8} {'STATE':10} {'MiB':>8} {'PID':>8} {'LEASES':>6}  EXPIRES")
    for r in snapshot["residents"]:
        expires = "never" if r["expires_in_s"] is None else f"in {r['expires_in_s']:.0f}s"
        if r["refcount"]:
            expires = "in use"
        print(f"{r['model']:32} {r['backend']:8} {r['state']:10} {r['memory_mb']:8.0f} {r['pid'] or '-':>8} "
              f"{r['refcount']:6}  {expires}")
    return 0


def unload(settings: Settings, model: str) -> int:
    with _client(settings) as client:
        response = client.post("/admin/unload", json={"model": model})
    if response.status_code != 200:
        print(f"modelyard: {response.json()['error']['message']}", file=sys.stderr)
        return 1
    print(json.dumps(response.json()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard", description="Local OpenAI-compatible model server.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "start the server"), ("ps", "list resident models"),
                            ("unload", "unload a model now")):
        sub = commands.add_parser(name, help=help_text)
        add_settings_flags(sub)
        if name == "unload":
            sub.add_argument("model")
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if args.command == "serve":
        return serve(settings)
    if args.command == "ps":
        return ps(settings)
    return unload(settings, args.model)


if __name__ == "__main__":
    sys.exit(main())
