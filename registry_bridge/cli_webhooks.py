"""``bridge webhooks``: register receivers of registry events, test them, see the deliveries,
and run a sender where no API runs.

Registered on the ``bridge`` group by registry_bridge/cli.py. The commands take the
group's state (settings, store) from the root context; errors are the group's: a
:class:`RegistryError` prints one ``error:`` line and exits 1, a bad option value exits 2.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import click

from registry_bridge import render, webhooks
from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore
from registry_bridge.webhook_sender import Sender


def _store() -> ModelStore:
    """The command's store, opened once on the ``bridge`` group's state (as cli.open_store)."""
    root = click.get_current_context().find_root()
    state = root.obj
    if state.store is None:
        state.store = ModelStore.from_settings(state.settings)
        root.call_on_close(state.store.close)
    return state.store


def _events(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    try:
        return webhooks.parse_events(value)
    except RegistryError as exc:
        raise click.BadParameter(
            f"{exc.message}; expected some of {', '.join(webhooks.EVENTS)} (or all)",
            ctx=ctx,
            param=param,
        ) from None


@click.group("webhooks", context_settings={"help_option_names": ["-h", "--help"]})
def group() -> None:
    """Signed JSON POSTs telling other systems of every registry change, and their deliveries."""


@group.command("add", short_help="Send chosen events to a URL (signed with --secret-env).")
@click.argument("url")
@click.option(
    "--events",
    required=True,
    callback=_events,
    help=f"Comma-separated events to send: {','.join(webhooks.EVENTS)}, or all.",
)
@click.option("--name", help="Name of the webhook (default: the URL's host).")
@click.option(
    "--secret-env",
    metavar="VAR",
    help="Sign every POST (X-Registry-Signature) with the secret in this environment "
    "variable; only its name is stored, senders read it when they send.",
)
def add_command(url: str, events: list[str], name: str | None, secret_env: str | None) -> None:
    """Send the chosen events to URL (http or https; a public address unless
    webhooks.allow_private is true)."""
    store = _store()
    settings = click.get_current_context().find_root().obj.settings.webhooks
    hook = webhooks.add_webhook(store.db, settings, url, events, name, secret_env)
    signed = f", signed with ${secret_env}" if secret_env else ", unsigned"
    click.echo(f"added webhook {hook['name']}: {', '.join(events)} -> {url}{signed}")


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List the webhooks: name, URL, events, the secret's variable."""
    hooks = webhooks.list_webhooks(_store().db)
    if as_json:
        click.echo(render.as_json([_hook_view(h) for h in hooks]))
    elif not hooks:
        click.echo("no webhook registered (bridge webhooks add URL --events ...)")
    else:
        rows = [
            (
                h["name"],
                h["url"],
                ",".join(h["events"]),
                h.get("secret_env"),
                render.when(h["created_at"]),
            )
            for h in hooks
        ]
        click.echo(render.table(["name", "url", "events", "secret env", "created"], rows))


@group.command("remove", short_help="Remove a webhook.")
@click.argument("name")
def remove_command(name: str) -> None:
    """Remove a webhook; its pending deliveries are dropped (marked failed)."""
    webhooks.remove_webhook(_store().db, name)
    click.echo(f"removed webhook {name}")


@group.command("test", short_help="POST a test event now and print the answer.")
@click.argument("name")
def test_command(name: str) -> None:
    """POST a test event to a webhook now and print the answer (exit 1 unless 2xx)."""
    store = _store()
    settings = click.get_current_context().find_root().obj.settings.webhooks
    hook = webhooks.get_webhook(store.db, name)
    sender = Sender(store.db, settings)
    owner = uuid.uuid4().hex
    delivery = webhooks.ping_delivery(store.db, hook, owner, sender.lease_s)
    result = sender.attempt(delivery, owner, final=True)
    said = f"HTTP {result.status_code}" if result.status_code else result.error
    if not result.delivered:
        raise RegistryError("CONFLICT", f"test delivery {delivery['_id']} to {name} failed: {said}")
    click.echo(f"test delivery {delivery['_id']} to {name}: {said} in {result.ms:.0f} ms")


@group.command("deliveries", short_help="List deliveries, newest first, with their last answer.")
@click.option("--failed", is_flag=True, help="Only deliveries given up or still retrying.")
@click.option("--webhook", metavar="NAME", help="Only this webhook's.")
@click.option("--limit", type=click.IntRange(1, webhooks.MAX_LISTED), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, every attempt included.")
def deliveries_command(failed: bool, webhook: str | None, limit: int, as_json: bool) -> None:
    """List deliveries, newest first: event, webhook, status, attempts, last answer."""
    found = webhooks.list_deliveries(_store().db, failed=failed, webhook=webhook, limit=limit)
    if as_json:
        click.echo(render.as_json([_delivery_view(d) for d in found]))
        return
    if not found:
        click.echo("no failed delivery" if failed else "no delivery yet")
        return
    rows = []
    for d in found:
        last = (d.get("attempts") or [{}])[-1]
        rows.append(
            (
                render.when(d["created_at"]),
                d["_id"],
                d["webhook"],
                d["event"],
                d.get("model"),
                _status(d),
                d.get("attempt_count", 0),
                _cut(str(last.get("status_code") or last.get("error") or "")),
            )
        )
    headers = ["created", "delivery", "webhook", "event", "model", "status", "attempts", "last"]
    click.echo(render.table(headers, rows))


@group.command("deliver", short_help="Send the deliveries due now (where no API runs).")
@click.option("--follow", is_flag=True, help="Keep sending as deliveries come due (Ctrl-C stops).")
def deliver_command(follow: bool) -> None:
    """Send the deliveries due now (where no API runs; each API worker sends on its own)."""
    store = _store()
    sender = Sender(store.db, click.get_current_context().find_root().obj.settings.webhooks)
    if follow:
        click.echo("sending webhook deliveries as they come due (Ctrl-C stops)")
        try:
            sender.run()
        except KeyboardInterrupt:
            sender.stop()
        return
    webhooks.prune(store.db, sender.settings.retention_days)
    counts = sender.deliver_due()
    click.echo(
        f"delivered {counts['delivered']}, retrying {counts['retrying']}, failed {counts['failed']}"
    )


def announce_drift(store: ModelStore, report: dict[str, Any]) -> None:
    """Emit the ``drift`` event of a ``bridge monitor`` report that flagged drift."""
    drifting = [f["name"] for f in report.get("features", []) if f.get("drift")]
    event = webhooks.new_event(
        "drift",
        report["name"],
        None,
        report["version"],
        None,
        f"drift in {', '.join(drifting)}" if drifting else "drift",
        {"features": drifting, "window": report.get("window"), "since": report.get("since")},
    )
    webhooks.emit(store.db, event)


def _status(delivery: dict[str, Any]) -> str:
    if delivery.get("status") == webhooks.PENDING and delivery.get("attempt_count", 0) > 0:
        return f"retrying at {time.strftime('%H:%M:%S', time.gmtime(delivery['due']))}Z"
    return str(delivery.get("status"))


def _cut(text: str, limit: int = 60) -> str | None:
    return (text if len(text) <= limit else text[: limit - 1] + "…") or None


def _hook_view(hook: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hook.items() if k != "_id"} | {"id": hook["_id"]}


def _delivery_view(delivery: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in delivery.items() if k not in ("_id", "lease_owner", "due")}
    return {"delivery_id": delivery["_id"], **view, "status": _status(delivery)}
