"""`only=` and `show=`: run ids as a user types them, put in terms Hydra's grammar accepts.

Run ids hold `=` and `,` (`patch_embed=frozen,lr=1.5e-4/seed=0`), which Hydra's grammar
refuses unquoted (`only=[lr=1.5e-4]`: "no viable alternative at input '[lr='"). So the
command line's `only=` and `show=` are rewritten before Hydra parses them:

    show=patch_embed=frozen,lr=1.5e-4/seed=0    one run id (or a text in exactly one id)

    only=lr=1.5e-4                   one substring, taken verbatim (commas included, so a
                                     whole run id copied from status.py works)
    only=[lr=1.5e-4,seed=0]          several substrings: a run matches if it holds any
    only=['a,b',c]  only=null        quoted items and Hydra's own forms pass as they are
"""

from __future__ import annotations

from moco3.experiments.rundir import LaunchError

ONLY = "only="
SHOW = "show="


def _split_list(inner: str) -> list[str]:
    """The items of `a,'b,c',d`: commas inside quotes do not split."""
    items, current, quote = [], "", ""
    for ch in inner:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == ",":
            items.append(current)
            current = ""
        else:
            current += ch
    if quote:
        raise LaunchError(f"only=[{inner}]: a quote is not closed; write e.g. "
                          "only=[lr=1.5e-4,seed=0] or only=lr=1.5e-4.")
    items.append(current)
    return [item.strip() for item in items]


def _unquote(item: str) -> str:
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        return item[1:-1]
    return item


def _quote(item: str) -> str:
    if "'" not in item:
        return f"'{item}'"
    if '"' not in item:
        return f'"{item}"'
    raise LaunchError(f"only: {item!r} holds both kinds of quote; run ids never do.")


def only_override(arg: str) -> str:
    """`only=...` as typed -> an override Hydra parses to the list of substrings meant."""
    value = arg[len(ONLY):]
    if value == "null":
        return arg
    if value.startswith("[") and value.endswith("]"):
        items = [_unquote(i) for i in _split_list(value[1:-1])]
    else:
        items = [_unquote(value)]
    if not all(items):
        raise LaunchError(f"{arg}: an empty item would match every run; write e.g. "
                          "only=lr=1.5e-4 or only=[lr=1.5e-4,seed=0].")
    return f"{ONLY}[{','.join(_quote(i) for i in items)}]"


def show_override(arg: str) -> str:
    """`show=RUN_ID` as typed -> the same value quoted for Hydra."""
    value = arg[len(SHOW):]
    if value == "null":
        return arg
    value = _unquote(value)
    if not value:
        raise LaunchError("show= needs a run id, e.g. show=patch_embed=frozen,lr=1.5e-4/seed=0 "
                          "(the dry run lists them).")
    return f"{SHOW}{_quote(value)}"
