"""`brick`: the root group. Each command group lives in its own module; this one only wires them in.

User mistakes (BrickError) print one message with its fix and exit 1, never a traceback.
Every listing command takes --json for scripting.
"""

from __future__ import annotations

import click

from cli import compress, demo, export, extract, host, manifest, ops, peft, registry, serve, steer
from cli.common import BrickGroup


@click.group(cls=BrickGroup)
@click.option("--registry", envvar="BRICK_REGISTRY", type=click.Path(file_okay=False),
              help="Registry folder (default: $BRICK_REGISTRY, else the user data dir).")
@click.version_option(package_name="brickwork")
def cli(registry: str | None) -> None:
    """brickwork: find the functional modules (bricks) inside an LLM, version them, serve them per request."""


COMMANDS = (
    registry.list_cmd, registry.show, registry.tag, registry.rm, registry.gc, registry.verify,
    registry.export_cmd, registry.import_cmd, registry.publish,
    peft.export_peft, peft.import_peft, export.export_model_cmd,
    host.host, manifest.manifest,
    serve.serve, serve.generate, serve.route,
    extract.extract_cmd, extract.eval_cmd, extract.audit_cmd, steer.steer_cmd,
    ops.train, ops.update, ops.merge, ops.grow, compress.compress_cmd,
    demo.demo_cmd,
)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="brick")


if __name__ == "__main__":
    main()
