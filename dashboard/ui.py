"""What every page shares: the data object for its role, friendly errors, time zone, small widgets."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import streamlit as st

from dashboard import data, fmt, session
from dashboard.data import CitizenData, OperatorData
from ledger.errors import InternalError, NotFound, Refused, Unavailable

log = logging.getLogger("cityledger.dashboard")

NOT_FOUND = "Not found. It may not exist, or it is not yours to see."


def citizen() -> CitizenData:
    """The signed-in citizen's data, or stop the page (never reached through the menu otherwise)."""
    who = session.current()
    if who is None or who.role != "citizen":
        st.info(NOT_FOUND)
        st.stop()
    return CitizenData(who)


def operator() -> OperatorData:
    who = session.current()
    if who is None or who.role != "operator":
        st.info(NOT_FOUND)
        st.stop()
    return OperatorData(who)


@contextlib.contextmanager
def guard(what: str = "this page") -> Iterator[None]:
    """Run a page body; show what went wrong as a sentence, never as a stack trace."""
    try:
        yield
    except NotFound:
        st.info(NOT_FOUND)
    except Refused as exc:
        st.error(f"Not done: {exc}")
    except Unavailable as exc:
        st.warning(
            f"The ledger is not reachable right now ({exc}). Is `cityledger ingest` running? "
            "This page will work again once it is."
        )
    except (ConnectionError, TimeoutError, OSError) as exc:
        log.warning("ledger unreachable while showing %s: %s", what, exc)
        st.warning("The ledger did not answer in time. Please try again in a moment.")
    except InternalError as exc:
        log.error("ledger error while showing %s: %s", what, exc)
        st.error("The ledger could not answer that request. It has been logged; please try again.")
    except Exception:  # a bug: logged with its trace on the server, a sentence for the person
        log.exception("error while showing %s", what)
        st.error(f"Something went wrong while showing {what}. It has been logged; please try again.")


def tz() -> ZoneInfo:
    try:
        return fmt.zone(data.tariffs()["timezone"])
    except Exception:  # the page still shows times if the tariffs cannot be read
        return fmt.zone(None)


def when(ms: int | None, *, seconds: bool = False) -> str:
    return fmt.when(ms, tz(), seconds=seconds)


def query_param(name: str) -> str | None:
    """A URL parameter, as plain text (never trusted: the data layer checks what it names)."""
    value = st.query_params.get(name)
    if value is None:
        return None
    return str(value)[:200]


def flash(message: str) -> None:
    """A confirmation to show after the rerun that follows an action."""
    st.session_state["_flash"] = message


def show_flash() -> None:
    message = st.session_state.pop("_flash", None)
    if message:
        st.success(message, icon=":material/check:")


def empty(message: str) -> None:
    st.info(message, icon="ℹ️")


def table(rows: list[dict[str, Any]], **kwargs: Any) -> Any:
    """Rows as a read-only table; text is shown as text, never as markup."""
    import pandas as pd

    return st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", **kwargs)
