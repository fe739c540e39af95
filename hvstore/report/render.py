"""report.md and index.html from the comparison's JSON document (``collect``). Pure: text in, text out.

The HTML is self-contained: inline CSS and SVG charts drawn here (horizontal bars, one chart per
profile), no script, no font, no network. Every figure printed comes from the document; a store or
scenario without a figure shows the reason the document gives.
"""

from __future__ import annotations

import html
from typing import Any

STATUS_COLOURS = {"ok": "#2e7d32", "failed": "#c62828", "error": "#ef6c00", "not-applicable": "#757575"}
BAR_COLOURS = ("#1565c0", "#6a1b9a", "#00838f", "#ad1457", "#558b2f", "#4e342e", "#283593", "#f9a825")


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _stores_with_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report.get("bench", {}).get("stores", [])


def _figure(store_run: dict[str, Any], profile: str) -> dict[str, Any] | None:
    return next((f for f in store_run.get("figures", []) if f["profile"] == profile), None)


def _fio(store_run: dict[str, Any], profile: str) -> dict[str, Any] | None:
    return next((f for f in store_run.get("fio") or [] if f["profile"] == profile), None)


CROSS_CHECK = "Cross-check through fio's own engine (no QEMU in the path)"


def _p99(figure: dict[str, Any]) -> str:
    """``, p99 X ms`` where the engine measured per-request latency (older qemu-img bench runs did not)."""
    return f", p99 {_fmt(figure['p99_latency_ms'], 3)} ms" if figure.get("p99_latency_ms") is not None else ""


def _rounds(bench: dict[str, Any]) -> str:
    rounds = bench.get("rounds")
    return f", median of {rounds} rounds" if isinstance(rounds, int) and rounds > 1 else ""


def _latency_note(bench: dict[str, Any]) -> str:
    if str(bench.get("engine", "")).startswith("qemu-img bench"):
        return "Latency is the mean (time x depth / requests)."
    return "Latency is per request (submission to completion): mean, and p99 in the table."


def _bench_machine(bench: dict[str, Any]) -> str:
    machine = bench.get("machine") or {}
    if not machine.get("cpu_model"):
        return ""
    return (f" Measured on {machine['cpu_model']} x {machine.get('nproc')}, kernel {machine.get('kernel')}, "
            f"load {machine.get('load_average')} before, {machine.get('load_average_after')} after; "
            f"{machine.get('fio', 'fio')}, {machine.get('qemu_nbd', 'qemu-nbd')}.")


def _scenario_cell(result: dict[str, Any]) -> str:
    m = result.get("measurements", {})
    parts = [result["status"]]
    for key, unit in (("takeover_s", "s takeover"), ("handoff_s", "s hand-off"), ("provision_s", "s provisioning")):
        if key in m:
            parts.append(f"{m[key]} {unit}")
    for check in result.get("checks", []):
        chunks = ", ".join(f"{k} {v}" for k, v in check.get("chunks", {}).items())
        parts.append(f"{check['expect']}: {'passed' if check['passed'] else 'FAILED'}: "
                     f"{check.get('meaning', '')} (final chunks: {chunks})")
    if result.get("reason"):
        parts.append(result["reason"])
    return "; ".join(parts)


def takeover_rows(report: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(label, seconds or None, note) for the takeover chart: lockd bench, failover per store, sanlock."""
    rows: list[tuple[str, float | None, str]] = []
    lockd = report.get("lockd") or {}
    if "takeover_s" in lockd:
        ttl = lockd.get("timing", {}).get("ttl_s")
        kind = str(lockd.get("store", "?")).split(":", 1)[0]  # "file:/tmp/..." -> "file"
        rows.append((f"lockd bench ({kind} store)", lockd["takeover_s"], f"lockd bench, TTL {ttl} s"))
    elif "error" in lockd:
        rows.append(("lockd", None, lockd["error"]))
    for result in report.get("scenarios", []):
        if result["scenario"] == "failover":
            seconds = result.get("measurements", {}).get("takeover_s")
            lease_store = result.get("measurements", {}).get("lease_store", "a file store")
            note = f"scenario failover (leases in {lease_store})" if seconds is not None else result.get("reason", "")
            rows.append((f"lockd failover on {result['store']}", seconds, note))
    sanlock = report.get("sanlock") or {}
    rows.append(("sanlock", sanlock.get("takeover_s"), sanlock.get("reason", "lockd bench's sanlock baseline")))
    return rows


# -- markdown ---------------------------------------------------------------------------------------
def render_markdown(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    bench = report.get("bench", {})
    lines = ["# hvstore compare", "",
             f"Run at {machine.get('time_utc', '?')} on {machine.get('hostname', '?')}: kernel "
             f"{machine.get('kernel', '?')}, {machine.get('nproc', '?')} CPUs, {machine.get('memory_mib', '?')} MiB, "
             f"load {machine.get('load_average', '?')} (after the benchmarks "
             f"{bench.get('machine', {}).get('load_average_after', '?')}); {machine.get('qemu_img', '')}. "
             f"Whole run {report.get('elapsed_s', '?')} s{' (--quick)' if report.get('quick') else ''}.", ""]
    lines += ["## Capabilities", ""]
    caps = report.get("capabilities", {})
    if caps:
        names = list(caps)
        lines.append("| feature | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        features = list(next(iter(caps.values()))["features"])
        for feature in features:
            cells = []
            for name in names:
                support = caps[name]["features"].get(feature, {})
                cells.append(("yes" if support.get("supported") else "no")
                             + (f" ({support['note']})" if support.get("note") else ""))
            lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    lines += ["", f"## I/O ({bench.get('engine', '?')}, ~{bench.get('seconds_per_profile', '?')} s per profile"
              f"{_rounds(bench)}, {(bench.get('volume_bytes') or 0) >> 20} MiB volume)", "",
              "IOPS (x baseline) / mean latency ms, p99 where the engine measured it. Baseline: a raw file in "
              f"/var/tmp, same run, same settings.{_bench_machine(bench)}", ""]
    profiles = bench.get("profiles", [])
    if profiles:
        lines.append("| store | " + " | ".join(p["name"] for p in profiles) + " |")
        lines.append("|---" * (len(profiles) + 1) + "|")
        for store_run in _stores_with_figures(report):
            if store_run.get("skipped"):
                lines.append(f"| {store_run['store']} | skipped: {store_run['skipped']} |" + " |" * (len(profiles) - 1))
                continue
            cells = []
            for p in profiles:
                f = _figure(store_run, p["name"])
                cell = "-" if f is None else (f"{_fmt(f['iops'])} (x{_fmt(f['iops_vs_baseline'], 2)}) / "
                                              f"{_fmt(f['mean_latency_ms'], 3)} ms{_p99(f)}")
                if fio := _fio(store_run, p["name"]):
                    cell += f"; fio {_fmt(fio['iops'])} / p99 {_fmt(fio['p99_latency_ms'], 3)} ms"
                cells.append(cell)
            lines.append(f"| {store_run['store']} ({store_run['backend']}, {store_run.get('qemu_format')}) | "
                         + " | ".join(cells) + " |")
        lines += ["", "Profiles: " + "; ".join(f"{p['name']} = {p['description']}" for p in profiles)]
        engines = [f"{r['store']}: {r['engine']}" for r in _stores_with_figures(report) if r.get("engine")]
        if engines:
            lines += ["", "Engine per store: " + "; ".join(engines) + "."]
        notes = [f"{r['store']}: {r['fio_note']}" for r in _stores_with_figures(report) if r.get("fio_note")]
        if notes:
            lines += ["", f"{CROSS_CHECK}: " + "; ".join(notes) + "."]
    lines += ["", "## Takeover after the holder's death", "", "| who | seconds | how |", "|---|---|---|"]
    lines += [f"| {label} | {_fmt(seconds, 2) if seconds is not None else 'not measured'} | {note} |"
              for label, seconds, note in takeover_rows(report)]
    lockd = report.get("lockd") or {}
    if "acquire_ms" in lockd:
        lines += ["", f"lockd acquire p50 {lockd['acquire_ms']['p50']} ms, p99 {lockd['acquire_ms']['p99']} ms; "
                  f"release p50 {lockd['release_ms']['p50']} ms ({lockd.get('store')})."]
    sanlock = report.get("sanlock") or {}
    if isinstance(sanlock.get("acquire_ms"), dict):
        lines += [f"sanlock acquire p50 {sanlock['acquire_ms'].get('p50')} ms, p99 {sanlock['acquire_ms'].get('p99')} "
                  f"ms; release p50 {sanlock.get('release_ms', {}).get('p50')} ms (lockd bench's baseline)."]
    lines += ["", "## Scenarios", ""]
    scenarios = report.get("scenarios", [])
    names = list(dict.fromkeys(r["scenario"] for r in scenarios))
    for name in names:
        lines += [f"### {name}", "", report.get("scenario_descriptions", {}).get(name, ""), ""]
        for result in (r for r in scenarios if r["scenario"] == name):
            lines.append(f"- **{result['store']}** ({result['backend']}): {_scenario_cell(result)}")
        lines.append("")
    for error in report.get("scenario_errors", []):
        lines.append(f"- scenario file error: {error}")
    return "\n".join(lines).rstrip() + "\n"


# -- SVG --------------------------------------------------------------------------------------------
def bar_chart(title: str, rows: list[tuple[str, float | None, str]], unit: str, *, width: int = 560) -> str:
    """Horizontal bars, one per row (label, value, note); a row without a value prints its note instead."""
    label_w = max(90, 7 * max((len(label) for label, _, _ in rows), default=0) + 12)
    bar_h, gap, top = 18, 6, 26
    height = top + len(rows) * (bar_h + gap) + 8
    values = [v for _, v, _ in rows if v is not None]
    scale = (width - label_w - 110) / max(values) if values and max(values) > 0 else 0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)}" class="chart">',
           f'<text x="0" y="16" font-weight="bold" font-size="13">{html.escape(title)}</text>']
    for i, (label, value, note) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{html.escape(label)}</text>')
        if value is None:
            out.append(f'<text x="{label_w}" y="{y + 13}" font-size="11" fill="#757575">'
                       f'{html.escape(note[:90])}</text>')
            continue
        bar = max(1.0, value * scale)
        colour = BAR_COLOURS[i % len(BAR_COLOURS)]
        out.append(f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{bar_h}" fill="{colour}">'
                   f'<title>{html.escape(label)}: {_fmt(value, 3)} {unit} {html.escape(note)}</title></rect>')
        out.append(f'<text x="{label_w + bar + 4:.1f}" y="{y + 13}" font-size="11">{_fmt(value, 2)} {unit}</text>')
    out.append("</svg>")
    return "".join(out)


def _e(text: Any) -> str:
    return html.escape(str(text))


def render_html(report: dict[str, Any]) -> str:
    bench = report.get("bench", {})
    machine = report.get("machine", {})
    profiles = bench.get("profiles", [])
    runs = _stores_with_figures(report)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>hvstore compare</title><style>",
             "body{font-family:sans-serif;margin:24px;color:#212121;max-width:1240px}h1{margin-bottom:4px}",
             "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "font-size:13px;vertical-align:top}th{background:#eceff1}.charts{display:flex;flex-wrap:wrap;gap:18px}",
             ".chart{background:#fafafa;border:1px solid #e0e0e0;padding:6px}.muted{color:#757575;font-size:13px}",
             ".yes{color:#2e7d32}.no{color:#c62828}.status{color:#fff;padding:1px 6px;border-radius:3px}",
             "</style></head><body>",
             "<h1>hvstore compare</h1>",
             f"<p class='muted'>Run at {_e(machine.get('time_utc', '?'))} on {_e(machine.get('hostname'))}: kernel "
             f"{_e(machine.get('kernel'))}, {_e(machine.get('nproc'))} CPUs, {_e(machine.get('memory_mib'))} MiB, "
             f"load average {_e(machine.get('load_average'))} before, "
             f"{_e(bench.get('machine', {}).get('load_average_after'))} after the I/O benchmarks; "
             f"{_e(machine.get('qemu_img'))}. Whole run {_e(report.get('elapsed_s'))} s"
             f"{' (--quick)' if report.get('quick') else ''}. Every figure below comes from this run.</p>"]
    # I/O charts
    parts.append(f"<h2>I/O per backend</h2><p class='muted'>{_e(bench.get('engine', ''))}, about "
                 f"{_e(bench.get('seconds_per_profile'))} s per profile on a "
                 f"{(bench.get('volume_bytes') or 0) >> 20} MiB scratch volume{_e(_rounds(bench))}; baseline = raw "
                 f"file in /var/tmp, same run. {_e(_latency_note(bench))}{_e(_bench_machine(bench))}</p>"
                 "<div class='charts'>")
    for p in profiles:
        iops_rows, lat_rows = [], []
        for run in runs:
            f = _figure(run, p["name"])
            note = run.get("skipped") or "no figure"
            iops_rows.append((run["store"], f["iops"] if f else None, note))
            lat_rows.append((run["store"], (f.get("p99_latency_ms") or f["mean_latency_ms"]) if f else None, note))
        parts.append(bar_chart(f"{p['name']}: IOPS ({p['description']})", iops_rows, "IOPS"))
        # p99 where the engine measured per-request latency (fio); the mean for older qemu-img bench runs
        has_p99 = any(f.get("p99_latency_ms") is not None for r in runs if (f := _figure(r, p["name"])))
        parts.append(bar_chart(f"{p['name']}: {'p99' if has_p99 else 'mean'} latency", lat_rows, "ms"))
    parts.append("</div>")
    if profiles:
        parts.append("<table><tr><th>store</th>" + "".join(f"<th>{_e(p['name'])}</th>" for p in profiles) + "</tr>")
        for run in runs:
            if run.get("skipped"):
                parts.append(f"<tr><td>{_e(run['store'])}</td><td colspan='{len(profiles)}'>skipped: "
                             f"{_e(run['skipped'])}</td></tr>")
                continue
            cells = []
            for p in profiles:
                f = _figure(run, p["name"])
                cell = "-" if not f else (f"{_fmt(f['iops'])} IOPS, {_fmt(f['mib_per_s'])} MiB/s<br>"
                                          f"x{_fmt(f['iops_vs_baseline'], 2)} baseline, "
                                          f"{_fmt(f['mean_latency_ms'], 3)} ms{_p99(f)}")
                if fio := _fio(run, p["name"]):
                    cell += (f"<br><span class='muted'>fio {_fmt(fio['iops'])} IOPS, p99 "
                             f"{_fmt(fio['p99_latency_ms'], 3)} ms</span>")
                cells.append(cell)
            parts.append(f"<tr><td>{_e(run['store'])} <span class='muted'>({_e(run['backend'])}, "
                         f"{_e(run.get('qemu_format'))})</span></td>"
                         + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        engines = [f"{r['store']}: {r['engine']}" for r in runs if r.get("engine")]
        if engines:
            parts.append(f"<p class='muted'>Engine per store: {_e('; '.join(engines))}.</p>")
        notes = [f"{r['store']}: {r['fio_note']}" for r in runs if r.get("fio_note")]
        if notes:
            parts.append(f"<p class='muted'>{CROSS_CHECK}: {_e('; '.join(notes))}.</p>")
    # takeover
    parts.append("<h2>Takeover after the holder's death</h2><div class='charts'>")
    parts.append(bar_chart("takeover time: lockd vs sanlock", takeover_rows(report), "s", width=760))
    parts.append("</div>")
    # scenarios
    scenarios = report.get("scenarios", [])
    stores = [s["name"] for s in report.get("stores", [])]
    names = list(dict.fromkeys(r["scenario"] for r in scenarios))
    parts.append("<h2>Scenario outcomes</h2>")
    if names:
        parts.append(_outcome_svg(scenarios, names, stores))
        parts.append("<table><tr><th>scenario</th>" + "".join(f"<th>{_e(s)}</th>" for s in stores) + "</tr>")
        for name in names:
            row = [f"<td><b>{_e(name)}</b><br><span class='muted'>"
                   f"{_e(report.get('scenario_descriptions', {}).get(name, ''))}</span></td>"]
            for store in stores:
                result = next((r for r in scenarios if r["scenario"] == name and r["store"] == store), None)
                if result is None:
                    row.append("<td>-</td>")
                    continue
                colour = STATUS_COLOURS.get(result["status"], "#000")
                row.append(f"<td><span class='status' style='background:{colour}'>{_e(result['status'])}</span> "
                           f"{_e(_scenario_cell(result).split('; ', 1)[-1] if '; ' in _scenario_cell(result) else '')}"
                           "</td>")
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</table>")
    # capabilities
    caps = report.get("capabilities", {})
    if caps:
        parts.append("<h2>Capabilities</h2><table><tr><th>feature</th>"
                     + "".join(f"<th>{_e(n)}<br><span class='muted'>{_e(c['backend'])}</span></th>"
                               for n, c in caps.items()) + "</tr>")
        for feature in next(iter(caps.values()))["features"]:
            cells = []
            for c in caps.values():
                s = c["features"].get(feature, {})
                mark = "<span class='yes'>✓</span>" if s.get("supported") else "<span class='no'>✗</span>"
                cells.append(f"<td title='{_e(s.get('note', ''))}'>{mark} <span class='muted'>"
                             f"{_e(s.get('note', ''))}</span></td>")
            parts.append(f"<tr><td>{_e(feature)}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _outcome_svg(scenarios: list[dict[str, Any]], names: list[str], stores: list[str]) -> str:
    cell_w, cell_h, left, top = 110, 26, 120, 22
    width, height = left + cell_w * len(stores) + 4, top + cell_h * len(names) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img" '
           'aria-label="scenario outcomes">']
    for j, store in enumerate(stores):
        out.append(f'<text x="{left + j * cell_w + cell_w / 2}" y="15" text-anchor="middle" font-size="12">'
                   f'{_e(store)}</text>')
    for i, name in enumerate(names):
        y = top + i * cell_h
        out.append(f'<text x="{left - 6}" y="{y + 17}" text-anchor="end" font-size="12">{_e(name)}</text>')
        for j, store in enumerate(stores):
            result = next((r for r in scenarios if r["scenario"] == name and r["store"] == store), None)
            status = result["status"] if result else "-"
            colour = STATUS_COLOURS.get(status, "#bdbdbd")
            x = left + j * cell_w
            out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{colour}">'
                       f'<title>{_e(_scenario_cell(result) if result else "not run")}</title></rect>')
            out.append(f'<text x="{x + cell_w / 2}" y="{y + 17}" text-anchor="middle" font-size="11" fill="#fff">'
                       f'{_e(status)}</text>')
    out.append("</svg>")
    return "".join(out)
