"""`kaip kb query NAME "question"`: ask a knowledge base, as the caller's own identity."""

from __future__ import annotations

import json
from typing import Annotated

import typer

kb_app = typer.Typer(help="Knowledge bases: query them.", no_args_is_help=True)


def parse_filters(pairs: list[str]) -> dict[str, object]:
    """`field=value` pairs; a field given twice matches any of its values."""
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: use field=value")
        if name in out:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[name] = value
    return out


@kb_app.command("query")
def query(name: Annotated[str, typer.Argument(help="Knowledge base name.")],
          question: Annotated[str, typer.Argument(help="The question.")],
          namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default 'default').")]
          = None,
          top_k: Annotated[int, typer.Option("--top-k", "-k", help="Passages to return.")] = 4,
          filters: Annotated[list[str] | None, typer.Option("--filter", "-f", help="field=value (repeatable).")]
          = None,
          output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text") -> None:
    """Retrieve the passages most similar to QUESTION (records are scoped to your identity)."""
    from kaip.cli.main import _client, _fail, _run, out

    def go() -> None:
        client = _client()
        body: dict[str, object] = {"query": question, "top_k": top_k}
        if filters:
            body["filter"] = parse_filters(filters)
        ns = namespace or "default"
        result = client._json("POST", f"/apis/kaip.dev/v1alpha1/namespaces/{ns}/knowledgebases/{name}/query",
                              json=body)
        if output == "json":
            out.print(json.dumps(result, indent=2), markup=False)
            return
        if output != "text":
            _fail(f"unknown output format {output!r}: use text or json")
        if not result["passages"]:
            out.print("no passages found", markup=False)
        for n, p in enumerate(result["passages"], 1):
            where = p["source"] + (f" § {p['position']['section']}" if p["position"].get("section") else
                                   f" record {p['position']['record']}" if "record" in p["position"] else "")
            out.print(f"[{n}] {p['score']:.3f}  {where}", markup=False)
            out.print("    " + p["text"].strip().replace("\n", "\n    "), markup=False)
    _run(go)


def register(app: typer.Typer) -> None:
    app.add_typer(kb_app, name="kb")

