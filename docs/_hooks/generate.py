"""MkDocs hook: add the generated pages (experiment-file reference, CLI reference, one page
per recipe) to the site, from delineo.docs_reference. Nothing is written into docs/."""

from __future__ import annotations

from mkdocs.structure.files import File


def on_files(files, config):
    from delineo.docs_reference import cli_reference, experiment_reference, recipe_page
    from delineo.recipes import list_recipes

    pages = {"reference/experiment.md": experiment_reference(), "reference/cli.md": cli_reference()}
    pages.update({f"recipes/{name}.md": recipe_page(name) for name in list_recipes()})
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files
