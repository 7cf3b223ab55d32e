"""The benchmark's markdown report: tables, ratios against the peers and the targets."""
from __future__ import annotations

import statistics
from typing import Any

from liveinit.contract import COSTS_LINE, PREFIX, RECORD
from liveinit.costs import KINDS

MiB = 1024 * 1024


def _mm(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


def _boots(rows: list[dict[str, str]], name: str) -> dict[str, list[float]]:
    ok = [r for r in rows if r["name"] == name and r["status"] == "ok"]
    out: dict[str, list[float]] = {"n": [float(len([r for r in rows if r["name"] == name]))],
                                   "ok": [float(len(ok))]}
    for col in ("in_initramfs", "run_init", "wall_s"):
        out[col] = [float(r[col]) for r in ok if r[col] not in ("NA", "")]
    out["unpack"] = [float(r["freeing_initrd"]) - float(r["unpack_start"]) for r in ok
                     if "NA" not in (r["freeing_initrd"], r["unpack_start"])]
    out["total"] = [float(r["marker_kmsg"] if r["marker_kmsg"] != "NA" else r["marker_uptime"]) for r in ok]
    return out


# The stage table's rows in boot order (the timed stages, then the runtime's total).
PARTS = ("interpreter start", "imports", "early", "cmdline", "coldplug", "findroot", "stack", "handover",
         "total (runtime)")
COLD_START = "interpreter start, cold (the first of a boot, as /init)"


def floor_note(boots: list[dict[str, str]], costs: dict[str, float]) -> list[str]:
    """What no CPython /init can beat on this VM: the hand-made lower bound
    (its module loads, mount and switch) plus the interpreter's cold start,
    and the speed-ups over the peers that this floor allows."""
    lb = _min(_boots(boots, "baseline")["in_initramfs"])
    cold = costs.get(COLD_START)
    if not lb or not cold:
        return []
    floor = lb + cold
    out = [f"Floor for a CPython /init on the disk case: the hand-made lower bound plus the interpreter's "
           f"cold start, {lb:.2f} + {cold:.2f} = {floor:.2f} s (with no work of its own). "
           "Against that floor:", ""]
    for peer, want in (("itools-most", 5), ("dracut-generic", 10)):
        p = _min(_boots(boots, peer)["in_initramfs"])
        if p:
            best = p / floor
            out.append(f"- {peer} ({p:.2f} s): at most {best:.1f}x faster (target {want}x: "
                       f"{'reachable' if best >= want else 'out of reach for any CPython /init'})")
    return out + [""]


DEBIAN = ("liveinit-debian", "liveboot-debian", "dracutlive-debian")


def debian_section(L: list[str], boots: list[dict[str, str]]) -> list[str]:
    """The Debian live system (systemd root on an ISO) to the serial console's login
    prompt: its table appended to `L`; returns its target rows."""
    li = _min(_boots(boots, DEBIAN[0])["total"])
    rows = [(name, _boots(boots, name)) for name in DEBIAN]
    if not any(b["n"][0] for _n, b in rows):
        return []
    L += ["## Boot: Debian live system (systemd) to the login prompt", "",
          "A debootstrap bookworm root with systemd, squashed on an ISO on the IDE CD; the same ISO for "
          "every initramfs. The time is the printk clock when the serial console's getty starts (a "
          "drop-in stamps /dev/kmsg just before it prints `login:`).", "",
          "| image | boots ok | to login prompt s (min / med) | liveinit / this | unpack s "
          "| Run /init at s |",
          "|---|---|---|---|---|---|"]
    for name, b in rows:
        if b["n"][0]:
            L.append(f"| {name} | {int(b['ok'][0])}/{int(b['n'][0])} | {_mm(b['total'])} | "
                     f"{'' if name == DEBIAN[0] else _ratio(li, _min(b['total']))} | {_mm(b['unpack'])} | "
                     f"{_mm(b['run_init'])} |")
    L.append("")
    lb = _min(_boots(boots, "liveboot-debian")["total"])
    if not li or not lb:
        return []
    return [f"| Debian live to login: at least 2x faster than live-boot | {lb / li:.1f}x "
            f"({lb:.2f} s vs {li:.2f} s) | {'met' if lb / li >= 2 else 'MISSED'} |"]


def growth(n0: float, c0: float, n1: float, c1: float) -> float:
    """The exponent k in cost ~ n^k between two sizes: 1 is linear, below 1 better."""
    import math
    if min(n0, n1, c0, c1) <= 0 or n0 == n1:
        return float("nan")
    return math.log(c1 / c0) / math.log(n1 / n0)


def _min(v: list[float]) -> float | None:
    return min(v) if v else None


def write_report(run: Any, images: dict[str, dict[str, str]], boots: list[dict[str, str]],
                 disk_stages: dict[str, float], live_stages: dict[str, float],
                 search_stages: dict[str, float], scale_rows: list[dict[str, float]], costs: dict[str, float],
                 machine: str) -> str:
    """Render the whole report; every ratio is liveinit / peer from this one run."""
    L: list[str] = ["# Benchmarks: liveinit beside initramfs-tools, dracut and hand-made images", ""]
    L += [f"Machine: {machine}.", "",
          "All numbers come from one run of `liveinit bench` (peers and liveinit on the same kernel, VM and "
          "host, boots round-robin). min / median; ratios use the min. The host is shared and noisy: compare "
          "ratios, not absolute seconds.", ""]

    gen = run.gen
    li_pack = _min(gen.get("liveinit", []))
    L += ["## Pack time (warm) and size", "",
          "| config | pack s (min / med) | liveinit pack speed-up | compressed MiB | uncompressed MiB "
          "| files | modules | liveinit size ratio |", "|---|---|---|---|---|---|---|---|"]
    li_size = int(images["liveinit"]["compressed_bytes"]) if "liveinit" in images else None
    for name in ("liveinit", "liveinit-hostonly", "baseline", "tiny", "itools-dep-hostsys", "itools-most",
                 "dracut-generic", "baseline-live", "liveboot-most", "dracutlive-live"):
        im = images.get(name)
        g = gen.get(name, [])
        if not im and not g:
            continue
        if not im:
            L.append(f"| {name} | {_mm(g)} | | | | | | |")
            continue
        csize = int(im["compressed_bytes"])
        speedup = "" if name.startswith("liveinit") else _ratio(_min(g), li_pack) + "x"
        L.append(f"| {name} | {_mm(g)} | {speedup} | "
                 f"{csize / MiB:.2f} | {int(im['uncompressed_cpio_bytes']) / MiB:.2f} | {im['files']} | "
                 f"{im['modules']} | {'' if name == 'liveinit' else _ratio(li_size, csize)} |")
    L.append("")

    targets: list[str] = []
    disk = ("liveinit", "liveinit-hostonly", "baseline", "tiny", "itools-dep-hostsys", "itools-most",
            "dracut-generic")
    live = ("liveinit-live", "liveinit-live-search", "baseline-live", "liveboot-most", "dracutlive-live")
    cases = (("disk (virtio-blk, ext4 root)", disk, "baseline"),
             ("live ISO on IDE CD", live, "baseline-live"))
    L += ["The headline is **total**: from the kernel's start (printk time 0) to the real init's "
          "first line on /dev/kmsg, what a user waits for: the kernel's unpack of the image, its own "
          "start-up, then the initramfs. *in initramfs* is the part after \"Run /init\".", ""]
    for case, names, ref_lb in cases:
        li = "liveinit" if case.startswith("disk") else "liveinit-live"
        li_b = _boots(boots, li)
        li_in, li_total = _min(li_b["in_initramfs"]), _min(li_b["total"])
        L += [f"## Boot: {case}", "",
              "| image | boots ok | total s, kernel start to real init (min / med) | liveinit / this (total) "
              "| unpack s | Run /init at s | in initramfs s (min / med) | liveinit / this (in initramfs) |",
              "|---|---|---|---|---|---|---|---|"]
        for name in names:
            b = _boots(boots, name)
            if not b["n"][0]:
                continue
            mine = name == li
            L.append(f"| {name} | {int(b['ok'][0])}/{int(b['n'][0])} | {_mm(b['total'])} | "
                     f"{'' if mine else _ratio(li_total, _min(b['total']))} | {_mm(b['unpack'])} "
                     f"| {_mm(b['run_init'])} | {_mm(b['in_initramfs'])} | "
                     f"{'' if mine else _ratio(li_in, _min(b['in_initramfs']))} |")
        L.append("")
        lb_b = _boots(boots, ref_lb)
        lb, lb_total = _min(lb_b["in_initramfs"]), _min(lb_b["total"])
        if li_total and lb_total:
            targets.append(f"| total, {case}: at most 1.35x the hand-made lower bound | "
                           f"{li_total / lb_total:.2f}x ({li_total:.2f} s vs {lb_total:.2f} s) | "
                           f"{'met' if li_total <= 1.35 * lb_total else 'MISSED'} |")
        total_peers = ((("itools-most", 2.5), ("dracut-generic", 4.5)) if case.startswith("disk")
                       else (("liveboot-most", 6), ("dracutlive-live", 6)))
        for peer, want in total_peers:
            p = _min(_boots(boots, peer)["total"])
            if li_total and p:
                targets.append(f"| total, {case}: at least {want}x faster than {peer} | "
                               f"{p / li_total:.1f}x ({p:.2f} s vs {li_total:.2f} s) | "
                               f"{'met' if p / li_total >= want else 'MISSED'} |")
        if li_in and lb:
            targets.append(f"| time in initramfs, {case}: at most 2x the hand-made lower bound | "
                           f"{li_in / lb:.2f}x ({li_in:.2f} s vs {lb:.2f} s) | "
                           f"{'met' if li_in <= 2 * lb else 'MISSED'} |")
        peers = ((("itools-most", 5), ("dracut-generic", 10)) if case.startswith("disk")
                 else (("dracutlive-live", 10),))
        for peer, want in peers:
            p = _min(_boots(boots, peer)["in_initramfs"])
            if li_in and p:
                targets.append(f"| time in initramfs, {case}: at least {want}x faster than {peer} | "
                               f"{p / li_in:.1f}x | {'met' if p / li_in >= want else 'MISSED'} |")
    targets += debian_section(L, boots)

    most_pack = _min(gen.get("itools-most", []))
    if li_pack:
        targets.insert(0, f"| universal pack under 1 s warm | {li_pack:.2f} s | "
                          f"{'met' if li_pack < 1 else 'MISSED'} |")
    if li_pack and most_pack:
        targets.insert(1, f"| pack at least 20x faster than itools-most | {most_pack / li_pack:.1f}x | "
                          f"{'met' if most_pack / li_pack >= 20 else 'MISSED'} |")
    if li_size and "itools-most" in images:
        most = int(images["itools-most"]["compressed_bytes"])
        targets.insert(2, f"| size at most 1/3 of itools-most | {li_size / most:.2f} ({li_size / MiB:.1f} vs "
                          f"{most / MiB:.1f} MiB) | {'met' if li_size * 3 <= most else 'MISSED'} |")
    if scale_rows and len(scale_rows) > 1:
        lo, hi = scale_rows[0], scale_rows[-1]
        for key, what in (("coldplug_ms", "coldplug"), ("rootsearch_ms", "root search")):
            exponent = growth(lo["devices"], lo[key], hi["devices"], hi[key])
            targets.append(f"| probing cost linear in devices: {what} grows as devices^k "
                           f"| k = {exponent:.2f} "
                           f"({lo['devices']:.0f} -> {hi['devices']:.0f} devices) | "
                           f"{'met' if exponent <= 1.1 else 'MISSED'} |")
    L += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|", *targets, ""]
    L += floor_note(boots, costs)

    L += ["## Where liveinit's boot time goes (median ms, from its console lines)", "",
          "liveinit-live boots with dracut's hint (`root=live:CDLABEL=`), liveinit-live-search with none "
          "(it searches every device, as live-boot does).", "",
          "| part | disk case | live case | live case, search |", "|---|---|---|---|"]
    cols = (disk_stages, live_stages, search_stages)
    rank = {k: i for i, k in enumerate(PARTS + tuple("sum: " + k for k in KINDS))}
    parts = sorted(set[str]().union(*cols), key=lambda s: (s.startswith("sum: "), rank.get(s, len(rank)), s))
    for k in parts:
        L.append(f"| {k} | " + " | ".join(f"{c.get(k, float('nan')):.0f}" for c in cols) + " |")
    costs_line = PREFIX + COSTS_LINE.format(summary="...")
    L += ["", f"The `sum:` rows come from the runtime's costs (`{costs_line}` at hand-over, `costs` "
          f"in {RECORD}), summed over every call of that kind from every thread: module loads, "
          "mounts, probing and the initramfs cleanup in the calling thread's CPU time, device waits in wall "
          "time. Kernel work deferred to its own threads (libata probing a port) counts as waiting. Module "
          "loads run in the background while the root search waits for their devices, so the rows overlap "
          "the stages."]
    L.append("")

    if costs:
        base = costs.get("interpreter start (-c pass)", 0.0)
        L += ["## What Python costs at boot (QEMU TCG, inside the benchmark VM, min of 3)", "",
              "Why the runtime uses neither psutil nor pyudev at boot (they are packed here only to be "
              "timed; the host side uses them): each command is a fresh interpreter, so subtract the "
              "first row.", "",
              "| what | ms | ms over a bare interpreter |", "|---|---|---|"]
        for k, v in costs.items():
            L.append(f"| {k} | {v * 1000:.0f} | {round((v - base) * 1000)} |")
        L.append("")

    if scale_rows:
        L += ["## Probing cost against simulated sysfs trees (native, outside QEMU)", "",
              "| devices | block devices | coldplug walk+match ms | ms per device | root search ms |",
              "|---|---|---|---|---|"]
        for r in scale_rows:
            L.append(f"| {r['devices']:.0f} | {r['blockdevs']:.0f} | {r['coldplug_ms']:.2f} | "
                     f"{r['coldplug_ms'] / r['devices']:.3f} | {r['rootsearch_ms']:.2f} |")
        L.append("")
    return "\n".join(L) + "\n"
