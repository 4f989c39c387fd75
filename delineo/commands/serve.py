"""``delineo serve``: the radiologist's viewer in the browser (see :mod:`delineo.serve`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from delineo.commands import verb

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None,
                   help="folder of models offered in the viewer (run folders, .pt checkpoints, .delineo files)")
    p.add_argument("--workspace", type=Path, default=Path("~/.delineo/workspace"),
                   help="folder holding studies, masks and their history (kept across restarts)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help="access token (default: a new random one, printed in the URL); "
                        "--no-auth switches authentication off")
    p.add_argument("--no-auth", action="store_true", help="no access token (only for a trusted single-user machine)")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest upload accepted (MB)")
    p.add_argument("--workers", type=int, default=1, help="jobs that run at the same time (others queue)")
    p.add_argument("--max-queued", type=int, default=16, help="waiting jobs accepted before new ones are refused")
    p.add_argument("--user", default="", help="name recorded with approvals when the browser gives none")


@verb("serve", "the viewer for radiologists: open a scan, run a model, correct, approve, export", _args)
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from delineo.serve.app import Settings, create_app

    token = "" if args.no_auth else args.token
    app = create_app(Settings(workspace=args.workspace.expanduser(), models=args.models, token=token,
                              max_upload_mb=args.max_upload_mb, workers=args.workers, max_queued=args.max_queued,
                              user=args.user))
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/" + (f"?token={app.state.token}" if app.state.token else "")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach the viewer; keep the token secret.", args.host)
    app.state.library.preload()
    n = len(app.state.library.list())
    print(f"Delineo viewer: {url}\n  workspace {app.state.workspace.root}, {n} model(s)"
          f"{' in ' + str(args.models) if args.models else ' (no --models folder given)'}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
