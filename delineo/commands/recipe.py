"""``delineo recipe``: list the published set-ups that ship with Delineo, show where one is,
or copy one into a folder to edit it."""

from __future__ import annotations

import argparse
from pathlib import Path

from delineo.commands import verb


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "path", "show", "copy"],
                   help="list: all recipes; path NAME: its folder; show NAME: its README; copy NAME DEST: an editable copy")
    p.add_argument("name", nargs="?", help="recipe name (see 'delineo recipe list')")
    p.add_argument("dest", nargs="?", type=Path, help="copy: the new folder")


@verb("recipe", "list, show or copy the published set-ups (recipes) that ship with Delineo", _args)
def cmd_recipe(args: argparse.Namespace) -> int:
    from delineo import recipes
    from delineo.errors import DelineoError

    if args.action == "list":
        for name in recipes.list_recipes():
            files = ", ".join(p.name for p in recipes.experiment_files(name))
            print(f"{name:16s} {files}\n{'':16s} {recipes.summary(name)}")
        return 0
    if not args.name:
        raise DelineoError(f"recipe {args.action}: a recipe NAME is needed (see 'delineo recipe list').")
    if args.action == "path":
        print(recipes.recipe_path(args.name))
    elif args.action == "show":
        print((recipes.recipe_path(args.name) / "README.md").read_text())
    else:
        if args.dest is None:
            raise DelineoError("recipe copy: a DEST folder is needed.")
        print(recipes.copy_recipe(args.name, args.dest))
    return 0
