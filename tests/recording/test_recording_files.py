"""Recording files: rotation, new files only."""

from __future__ import annotations

from egress_gateway.recording import files


def test_recording_files_rotate_and_never_append_to_old_files(tmp_path):
    rf = files.RecordingFiles(tmp_path, max_bytes=100, fsync=False)
    rel1, off1, rot1 = rf.append("s", b"a" * 60, 0)
    rel2, off2, rot2 = rf.append("s", b"b" * 60, 0)  # would exceed 100: next part
    rel3, off3, _ = rf.append("s", b"c" * 30, 0)
    assert (rel1, off1, rot1) == ("1970-01-01/s.mitm", 0, False)
    assert (rel2, off2, rot2) == ("1970-01-01/s.1.mitm", 0, True)
    assert (rel3, off3) == ("1970-01-01/s.1.mitm", 60)
    rf.close()
    again = files.RecordingFiles(tmp_path, max_bytes=0, fsync=False)  # a restart
    assert again.append("s", b"d", 0)[0] == "1970-01-01/s.2.mitm"
    again.close()
