"""The Releaser hands memory back only once the process has grown past its slack, and follows the
working set: a level that grew becomes the new reference, a level that shrank too."""

from __future__ import annotations

from netrecall.memory import Releaser, rss_bytes

MB = 1 << 20


def test_rss_is_this_process_resident_set() -> None:
    before = rss_bytes()
    blob = b"x" * (64 * MB)  # written, so resident
    assert rss_bytes() - before >= 60 * MB
    del blob


def test_releaser_follows_the_working_set() -> None:
    release = Releaser(None, slack=32 * MB)
    start = release.settled
    release()
    assert release.settled <= start + 8 * MB  # nothing grew: still the reference it had

    blob = b"x" * (96 * MB)
    release()  # grown past the slack: released, and the live 96 MB are the new level
    assert release.settled >= start + 88 * MB
    grown = release.settled

    del blob
    release()  # shrank: the lower level is the reference again, so growth is measured from there
    assert release.settled <= grown - 88 * MB
