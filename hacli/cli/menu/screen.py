"""The menu text: CKDemo's sections, numbers and names, as in the origin document.

Pure data and string building, no I/O: :func:`menu_lines` gives the lines the
loop prints, :func:`status_line` the line printed after every action.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacli.engine.ckr import explain


@dataclass(frozen=True)
class Section:
    """One heading of the menu and its rows of ``(number, name)`` entries."""

    title: str
    rows: tuple[tuple[tuple[int, str], ...], ...]
    #: Column width of a name (CKDemo pads names to 14 characters).
    width: int = 14


#: The CKDemo menu of the origin document, section by section, row by row.
CKDEMO: tuple[Section, ...] = (
    Section("TOKEN FUNCTIONS", (
        ((1, "Open Session"), (2, "Close Session"), (3, "Login")),
        ((4, "Logout"), (5, "Change PIN"), (6, "Init Token")),
        ((7, "Init Pin"), (8, "Mechanism List"), (9, "Mechanism Info")),
        ((10, "Get Info"), (11, "Slot Info"), (12, "Token Info")),
        ((13, "Session Info"), (14, "Get Slot List"), (15, "Wait for Slot Event")),
        ((16, "InitToken(ind)"), (17, "InitPin (ind)"), (18, "Login (ind)")),
        ((19, "CloneMofN"),),
    )),
    Section("OBJECT MANAGEMENT FUNCTIONS", (
        ((20, "Create object"), (21, "Copy object"), (22, "Destroy object")),
        ((23, "Object size"), (24, "Get attribute"), (25, "Set attribute")),
        ((26, "Find object"), (27, "Display Object")),
    )),
    Section("SECURITY FUNCTIONS", (
        ((40, "Encrypt file"), (41, "Decrypt file"), (42, "Sign")),
        ((43, "Verify"), (44, "Hash file"), (45, "Simple Generate Key")),
        ((46, "Digest Key"),),
    )),
    Section("HIGH AVAILABILITY RECOVERY FUNCTIONS", (
        ((50, "HA Init"), (51, "HA Login"), (52, "HA Status")),
    )),
    Section("KEY FUNCTIONS", (
        ((60, "Wrap key"), (61, "Unwrap key"), (62, "Generate random number")),
        ((63, "Derive Key"), (64, "PBE Key Gen"), (65, "Create known keys")),
        ((66, "Seed RNG"), (67, "EC User Defined Curves")),
    )),
    Section("CA FUNCTIONS", (
        ((70, "Set Domain"), (71, "Clone Key"), (72, "Set MofN")),
        ((73, "Generate MofN"), (74, "Activate MofN"), (75, "Generate Token Keys")),
        ((76, "Get Token Cert"), (77, "Sign Token Cert"), (78, "Generate CertCo Cert")),
        ((79, "Modify MofN"), (86, "Dup. MofN Keys"), (87, "Deactivate MofN")),
    )),
    Section("CCM FUNCTIONS", (
        ((80, "Module List"), (81, "Module Info"), (82, "Load Module")),
        ((83, "Load Enc Mod"), (84, "Unload Module"), (85, "Module function Call")),
    )),
    Section("OTHERS", (
        ((90, "Self Test"), (94, "Open Access"), (95, "Close Access")),
        ((97, "Set App ID"), (98, "Options")),
    )),
    Section("OFFBOARD KEY STORAGE:", (
        ((101, "Extract Masked Object"), (102, "Insert Masked Object")),
        ((103, "Multisign With Value"), (104, "Clone Object")),
        ((105, "SIMExtract"), (106, "SIMInsert")),
        ((107, "SimMultiSign"),),
    ), width=22),
    Section("SCRIPT EXECUTION:", (
        ((108, "Execute Script"),),
        ((109, "Execute Asynchronous Script"),),
        ((110, "Execute Single Part Script"),),
    ), width=22),
)

#: hacli's own section, shown when the configured group is a lab group.
LAB = Section("LAB FUNCTIONS (hacli lab):", (
    ((120, "Fail member"), (121, "Hang member"), (122, "Restore member")),
    ((123, "Lab status"),),
), width=16)

QUIT_LINE = "(0) Quit demo"
#: The menu prompt (``Prompter.ask`` adds ": "): ``Enter your choice : ``.
PROMPT = "Enter your choice "

def sections(lab: bool) -> tuple[Section, ...]:
    """The menu's sections (with the lab section for a lab group)."""
    return (*CKDEMO, LAB) if lab else CKDEMO


def entries(lab: bool) -> dict[int, str]:
    """Every option number of the menu -> its name (0 is Quit)."""
    out = {n: name for s in sections(lab) for row in s.rows for n, name in row}
    out[0] = "Quit demo"
    return out


#: Names CKDemo prints glued to the next entry (they fill the column exactly).
_GLUED = frozenset({"InitToken(ind)", "Get Token Cert", "Sign Token Cert"})


def _cell(number: int, name: str, width: int) -> str:
    gap = "" if name in _GLUED or len(name) < width else " "
    return f"({number:2d}) {name:<{width}}{gap}"


def menu_lines(lab: bool) -> list[str]:
    """The menu as CKDemo prints it: headings, rows of entries, Quit."""
    lines: list[str] = []
    for s in sections(lab):
        lines.append(s.title)
        for row in s.rows:
            lines.append("".join(_cell(n, name, s.width) for n, name in row).rstrip())
    lines.append(QUIT_LINE)
    return lines


def status_line(ckr: str) -> str:
    """CKDemo's line after an action: ``Status: Doing great, no errors (CKR_OK)``."""
    return f"Status: {explain(ckr)} ({ckr})"


def unsupported_text(number: int, name: str) -> str:
    return (f"({number}) {name} is a Luna appliance function that this tool does not "
            "provide.")
