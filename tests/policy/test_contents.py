"""The digest of a batch's files: equal exactly when the ordered files are."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.policy.contents import ContentsDigest, contents_digest
from actors.policy.model import FileRecord

_FILES = st.lists(
    st.builds(
        FileRecord,
        file_id=st.just("f00001"),
        # Any text: the framing, not the name rules, keeps lists apart.
        name=st.text(max_size=6),
        blob=st.sampled_from(["ab" * 32, "cd" * 32]),
        size=st.integers(min_value=0, max_value=3),
    ),
    max_size=4,
)


def _contents(files: list[FileRecord]) -> list[tuple[str, str, int]]:
    return [(f.name, f.blob, f.size) for f in files]


@given(_FILES, _FILES)
def test_two_lists_of_files_have_one_digest_exactly_when_they_are_the_same(
    first: list[FileRecord], second: list[FileRecord]
) -> None:
    same = _contents(first) == _contents(second)
    assert (contents_digest(first) == contents_digest(second)) is same


@given(_FILES, _FILES)
def test_a_digest_built_a_file_at_a_time_is_that_of_the_whole_list(
    head: list[FileRecord], tail: list[FileRecord]
) -> None:
    digest = ContentsDigest()
    for file in head:
        digest.add(file)
    assert digest.hexdigest() == contents_digest(head)
    for file in tail:
        digest.add(file)
    assert digest.hexdigest() == contents_digest(head + tail)
    assert digest.files == len(head) + len(tail)
