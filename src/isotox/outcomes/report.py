"""The outcome report (one self-contained HTML page): what a reader of the trial looks at first.

Order: the primary endpoint as the protocol defines it (with the protocol's own source text),
the Simon design check in words (a rule that is not the design the protocol claims is said
here, not only in simon.json), the monitor with its pending patients, local failure by both
estimators under their names, and observed toxicity next to the NTCP of the same endpoint.
Tables are escaped by pandas; no template engine, no external assets.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from isotox.atomic import write_text

_STYLE = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
          "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%;vertical-align:top}"
          ".flag{background:#fff3cd;border-left:4px solid #d39e00;padding:0.5em 1em}.ok{background:#e8f5e9;padding:0.5em 1em}")


def _p(text: str, cls: str | None = None) -> str:
    return f"<p{f' class={cls!r}' if cls else ''}>{html.escape(text)}</p>"


def _table(frame: pd.DataFrame) -> str:
    if frame is None or frame.empty:
        return _p("(no rows)")
    def cell(v: Any) -> Any:  # missing as blank (pd.NA of integer columns would print '<NA>'), floats to 4 digits
        if not isinstance(v, (list, dict)) and pd.isna(v):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else v

    return frame.map(cell).to_html(index=False, border=0)


def _simon_section(simon_result: dict[str, Any]) -> list[str]:
    if "protocol_design" not in simon_result:
        return ["<h2>Simon two-stage design</h2>", _p(simon_result.get("note", "no Simon design"))]
    d = simon_result["protocol_design"]
    parts = ["<h2>Simon two-stage design</h2>",
             _p(f"Protocol rule {d['r1']}/{d['n1']}, {d['r']}/{d['n']} on the rate of patients free of serious toxicity "
                f"(p0 {simon_result['p0']:g}, p1 {simon_result['p1']:g}, stated alpha {simon_result['alpha']:g}, stated power {simon_result['power']:g}): "
                f"computed type I error {d['alpha']:.3f}, power {d['power']:.3f}, early termination under p0 {d['pet0']:.3f}, expected size {d['en0']:.1f}.")]
    parts += [_p(note) for note in simon_result.get("notes") or []]
    flags = simon_result.get("flags") or []
    if flags:
        parts.append("<div class='flag'><strong>The protocol's stopping rule is not the design it claims:</strong><ul>"
                     + "".join(f"<li>{html.escape(f)}</li>" for f in flags) + "</ul></div>")
    else:
        parts.append(_p("The rule is the design the protocol claims, with the stated alpha and power.", "ok"))
    designs = pd.DataFrame([{"design": k, **simon_result[k]} for k in ("protocol_design", "protocol_design_if_alpha_two_sided", "optimal", "minimax") if simon_result.get(k)])
    parts.append(_table(designs))
    monitor = simon_result.get("monitor") or {}
    rows = [{"analysis": name, **{k: (", ".join(v) if isinstance(v, list) else v) for k, v in monitor[key].items()}}
            for name, key in (("stage 1", "stage1"), ("final", "final")) if key in monitor]
    parts += ["<h3>Monitor (evaluable patients only)</h3>", _table(pd.DataFrame(rows))]
    if monitor.get("not_evaluable"):
        parts.append(_p("Left out (not evaluable): " + "; ".join(f"{k}: {v}" for k, v in monitor["not_evaluable"].items())))
    return parts


def write_report(path: Path, protocol: dict[str, Any], *, primary: pd.DataFrame, simon_result: dict[str, Any], evaluability: pd.DataFrame,
                 local_failure: pd.DataFrame, toxicity_ntcp: pd.DataFrame, problems: int) -> None:
    """Write the outcome report to ``path`` (atomically)."""
    spec = protocol.get("primary_endpoint") or {}
    window = (protocol.get("safety") or {}).get("toxicity_window")
    parts = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>isotox outcomes: {html.escape(protocol.get('name', ''))}</title>"
              f"<style>{_STYLE}</style></head><body>"),
             f"<h1>Outcomes: {html.escape(protocol.get('title', protocol.get('name', '')))}</h1>",
             "<h2>Primary endpoint</h2>",
             _p(f"{spec.get('kind', 'not stated')}: {spec.get('description', 'the protocol names no primary endpoint')}"),
             _p(f"Source: {spec.get('source', '-')}"),
             _table(primary),
             *_simon_section(simon_result),
             "<h2>Toxicity evaluability</h2>",
             _p(f"Toxicity window: {window['months']:g} months from {window['origin']}. {window['source']}" if window else
                "The protocol gives no toxicity window: every recorded grade is taken as final."),
             _table(evaluability[evaluability["status"].isin(("pending", "not evaluable"))] if "status" in evaluability else evaluability),
             "<h2>Local failure (time in months)</h2>",
             _p("When death competes with local progression, the probability of local failure is the Aalen-Johansen cumulative incidence; "
                "1 - Kaplan-Meier with deaths censored is shown next to it under its own name (it overstates local failure)."),
             _table(local_failure),
             "<h2>Observed toxicity and NTCP of the same endpoint</h2>",
             _table(toxicity_ntcp),
             _p(f"{problems} data problems: see problems.tsv."),
             "</body></html>\n"]
    write_text(path, "\n".join(parts))
