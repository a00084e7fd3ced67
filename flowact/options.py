"""Option types that several `flowact` commands share."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

BusOption = Annotated[
    Optional[str],  # noqa: UP045 (typer reads the annotation at run time)
    typer.Option("--bus", help="Bus URL: redis://host:port/db or memory:// [env: FLOWACT_BUS_URL]"),
]


PresetOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--preset", "-p", help="Renderer preset: tiny, demo or paper-480p."),
]
DeviceOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--device", "-d", help="torch device: cpu, cuda, cuda:1, ..."),
]
# training and evaluation: the GPU when there is one (`renderer.training.common.pick_device`)
AutoDeviceOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--device",
        "-d",
        help="torch device: cpu, cuda, cuda:1, ... (default: CUDA when there is one, else cpu).",
    ),
]
