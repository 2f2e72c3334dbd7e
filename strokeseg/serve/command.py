"""The ``strokeseg serve`` command line: options, one-line errors (exit 2), then the server."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strokeseg.errors import StrokesegError

HELP = "a local web app: upload a scan, see the lesion mask in a NIfTI viewer, download mask and table"
DEFAULT_MAX_UPLOAD_MB = 512.0
DEFAULT_RETENTION_MINUTES = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--models", type=Path, required=True, metavar="DIR",
                        help="a models folder, e.g. 10_fusion/models (as for strokeseg predict)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 opens it "
                             "to the network: use --token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--token", default=None,
                        help="access token every API request must carry (open the page as /?token=...)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest upload accepted, all channels together (default: %(default)g)")
    parser.add_argument("--retention-minutes", type=float, default=DEFAULT_RETENTION_MINUTES,
                        help="minutes a finished case's files are kept (default: %(default)g; all are removed "
                             "when the server stops)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where case folders are made (default: the system's temporary folder)")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Exit status 2 with one line for a bad models folder or option; 0 when the server stops."""
    from strokeseg.infer.predict import onednn_setting
    from strokeseg.runtime import configure_tensorflow

    if not 0 < args.port < 65536:
        print(f"error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        configure_tensorflow(onednn_setting(args.models))
        from strokeseg.serve.app import serve

        serve(args.models, args.host, args.port, token=args.token, max_upload_mb=args.max_upload_mb,
              retention_minutes=args.retention_minutes, work_dir=args.work_dir)
    except StrokesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
