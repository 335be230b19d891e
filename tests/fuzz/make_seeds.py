"""Write the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/seed-*.

Real chunks of the sample clips (``facestream models pull --samples``) cut with
:func:`gop_chunks`, each cut down to its first whole packets (a few tens of kB: the corpus
stays small in git), plus hand-made edge cases.  Files named ``regress-*`` (inputs that once
broke a contract) are never touched.  Deterministic: running it again rewrites the same
bytes.

    .venv/bin/python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import av  # noqa: E402

import fuzz_client  # noqa: E402, F401  (its seeds are events as the Redis sink writes them)
import fuzz_dead_letters  # noqa: E402
import fuzz_decode  # noqa: E402
import fuzz_events  # noqa: E402
import fuzz_message  # noqa: E402
import fuzz_packets  # noqa: E402
import fuzz_registry  # noqa: E402
from facestream import events  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.ingest import chunks  # noqa: E402

CORPUS = HERE / "corpus"
CLIPS = ("face_noface.mov", "single_face.mp4")


def real_chunks(stream_id: str = "cam") -> dict[str, list[chunks.Chunk]]:
    samples = Settings.load(environ={}).cache_dir / "samples"
    out = {}
    for name in CLIPS:
        path = samples / name
        if not path.is_file():
            sys.exit(f"{path} is missing: run `facestream models pull --samples` first")
        with av.open(str(path)) as container:
            out[name] = list(chunks.gop_chunks(container, stream_id=stream_id))
    return out


def cut(chunk: chunks.Chunk, budget: int) -> chunks.Chunk:
    """The chunk with only its first whole packets, at most ``budget`` bytes of payload
    (at least the keyframe)."""
    packets, size = [], 0
    for p in chunk.packets():
        if packets and size + len(p.data) + chunks._PACKET.size > budget:
            break
        packets.append(p)
        size += len(p.data) + chunks._PACKET.size
    return chunks.Chunk(**{**chunk.__dict__, "payload": chunks.pack(packets)})


def with_headers(chunk: chunks.Chunk, **changes: bytes | None) -> list[tuple[str, bytes]]:
    """``chunk``'s headers with some replaced (bytes), dropped (None) or added."""
    names = {k.replace("_", "-"): v for k, v in changes.items()}
    out = [(n, names.pop(n, v)) for n, v in chunk.headers()]
    out += list(names.items())
    return [(n, v) for n, v in out if v is not None]


def message_seeds(real) -> dict[str, bytes]:
    w = fuzz_message.write_message
    mov, mp4 = cut(real["face_noface.mov"][0], 16_000), cut(real["single_face.mp4"][0], 16_000)
    part = mov.split(6_000)[1]
    # Edge cases on the headers: a real chunk's, with a one-packet payload (small in git).
    small = replace(mp4, payload=chunks.pack([chunks.Packet(mp4.first_pts, mp4.first_pts, 512,
                                                            True, b"\0\0\0\1e" * 4)]))
    eos = chunks.EndOfStream("cam", 5)
    clock = chunks.MediaClock("cam", 5, 12_500_000)
    return {
        "hevc-mov": w(mov.headers(), mov.payload, b"cam"),
        "h264-mp4": w(mp4.headers(), mp4.payload),
        "part-2-of-3": w(part.headers(), part.payload, b"cam"),
        "end-of-stream": w(eos.headers(), None, b"cam"),
        "media-clock": w(clock.headers(), None, b"cam"),
        "live": w(with_headers(small, fs_live=b"1"), small.payload),
        "key-differs": w(small.headers(), small.payload, b"other"),
        "missing-pts": w(with_headers(small, fs_pts=None), small.payload),
        "header-twice": w(small.headers() + [("fs-seq", b"2")], small.payload),
        "header-too-big": w(with_headers(small, x_note=b"n" * 1025), small.payload),
        "format-other": w(with_headers(small, fs_format=b"fs-packets-2"), small.payload),
        "stream-not-ascii": w(with_headers(small, fs_stream="caméra".encode()), small.payload),
        "time-base-0": w(with_headers(small, fs_time_base=b"1/0"), small.payload),
        "time-base-big": w(with_headers(small, fs_time_base=b"2147483648/1"), small.payload),
        "pts-int64": w(with_headers(small, fs_pts=b"9223372036854775807",
                                    fs_origin_pts=b"-9223372036854775807"), small.payload),
        "part-0": w(with_headers(small, fs_part=b"0/1"), small.payload),
        "parts-many": w(with_headers(small, fs_part=b"4097/4097"), small.payload),
        "size-zero": w(with_headers(small, fs_size=b"0x540"), small.payload),
        "codec-other": w(with_headers(small, fs_codec=b"prores"), small.payload),
        "seq-negative": w(with_headers(small, fs_seq=b"-1"), small.payload),
        "seq-digits": w(with_headers(small, fs_seq=b"1" * 21), small.payload),
        "empty-payload": w(small.headers(), b""),
        "no-headers": w([], b"x"),
    }


def packets_seeds(real) -> dict[str, bytes]:
    w = fuzz_packets.write_input
    out = {}
    for name, tag in zip(CLIPS, ("hevc", "h264")):
        chunk = cut(real[name][0], 16_000)
        out[f"{tag}-first-packets"] = w(chunk.payload, time_base=chunk.time_base,
                                        first_pts=chunk.first_pts)
    one = chunks.pack([chunks.Packet(0, -512, 512, True, b"\0\0\0\1\x40\1")])
    tb = Fraction(1, 15360)
    out.update({
        "one-packet": w(one, time_base=tb, first_pts=0),
        "no-timestamps": w(chunks.pack([chunks.Packet(None, None, 0, True, b"k")]),
                           time_base=tb, first_pts=0),
        "not-keyframe": w(chunks.pack([chunks.Packet(0, 0, 0, False, b"d")]),
                          time_base=tb, first_pts=0),
        "truncated-header": w(one[:20], time_base=tb, first_pts=0),
        "size-overrun": w(one[:-1], time_base=tb, first_pts=0),
        "negative-duration": w(chunks.pack([chunks.Packet(0, 0, -1, True, b"")]),
                               time_base=tb, first_pts=0),
        "pts-far": w(chunks.pack([chunks.Packet(3601 * 15360, 0, 0, True, b"")]),
                     time_base=tb, first_pts=0),
        "empty": w(b"", time_base=tb, first_pts=0),
    })
    return out


def decode_seeds(real) -> dict[str, bytes]:
    w = fuzz_decode.write_input
    mov, mp4 = real["face_noface.mov"], real["single_face.mp4"]
    out = {}
    for tag, chunk, budget in (("hevc-chunk0", mov[0], 40_000), ("hevc-chunk3", mov[3], 30_000),
                               ("h264-chunk0", mp4[0], 30_000)):
        small = cut(chunk, budget)
        out[tag] = w(small.payload, codec=small.codec, time_base=small.time_base,
                     extradata=small.extradata)
    keyframe = cut(mp4[0], 1)
    small = cut(mov[0], 16_000)
    out["hevc-unmended"] = w(small.payload, codec=small.codec, time_base=small.time_base,
                             extradata=small.extradata, mend=False)
    out["h264-as-hevc"] = w(keyframe.payload, codec="hevc", time_base=Fraction(1, 15360),
                            extradata=b"")
    out["h264-no-extradata"] = w(keyframe.payload, codec="h264",
                                 time_base=Fraction(1, 15360), extradata=b"")
    return out


def registry_seeds() -> dict[str, bytes]:
    w = fuzz_registry.write_input

    def spec(**fields) -> bytes:
        return json.dumps(fields).encode()

    return {
        "rtsp": w("cam-1", spec(source="rtsp://cams.example.com/live/1", fps=5,
                                profile="compact")),
        "https-facellava": w("lobby", spec(source="https://93.184.215.14/x.m3u8",
                                           profile="facellava")),
        "host-listed": w("cam", spec(source="rtsp://10.0.0.7:8554/a"), settings=2),
        "host-not-listed": w("cam", spec(source="rtsp://other.example.com/a"), settings=2),
        "loopback": w("cam", spec(source="http://127.0.0.1:8080/x")),
        "loopback-decimal": w("cam", spec(source="http://2130706433/x")),
        "ipv6-loopback": w("cam", spec(source="rtsp://[::1]:8554/x")),
        "ipv6-mapped": w("cam", spec(source="rtsp://[::ffff:10.1.2.3]/x")),
        "ipv6-unclosed": w("cam", spec(source="http://[::1/x")),
        "file": w("cam", spec(source="/dev/null"), settings=1),
        "file-url": w("cam", spec(source="file:///tmp/none.mp4")),
        "file-allowed-missing": w("cam", spec(source="file:///no/such/clip.mp4"), settings=1),
        "webcam": w("cam", spec(source="webcam:0"), settings=3),
        "ftp": w("cam", spec(source="ftp://example.com/x.mp4"), settings=3),
        "not-json": w("cam", b"{source:"),
        "not-utf8": w("cam", b"\xff\xfe\x00"),
        "array": w("cam", b"[1, 2]"),
        "nested": w("cam", b"[" * 64 + b"]" * 64),
        "unknown-field": w("cam", spec(source="rtsp://a.example/x", url="y")),
        "fps-bool": w("cam", b'{"source": "rtsp://a.example/x", "fps": true}'),
        "fps-nan": w("cam", b'{"source": "rtsp://a.example/x", "fps": NaN}'),
        "fps-huge": w("cam", b'{"source": "rtsp://a.example/x", "fps": 1e999}'),
        "fps-big-int": w("cam", b'{"source": "rtsp://a.example/x", "fps": ' + b"9" * 400 + b"}"),
        "profile-list": w("cam", b'{"source": "rtsp://a.example/x", "profile": ["compact"]}'),
        "source-number": w("cam", b'{"source": 5}'),
        "stream-id-bad": w("../cam", spec(source="rtsp://a.example/x")),
        "stream-id-long": w("c" * 300, spec(source="rtsp://a.example/x")),
    }


def events_seeds() -> dict[str, bytes]:
    e, t = fuzz_events.write_stream_error, fuzz_events.write_track_event
    now = 1_760_000_000.25
    return {
        "error": e(stream_id="cam", message="not a chunk: missing headers: fs-pts",
                   time_s=12.5, seq=41, time_epoch=now, fatal=False),
        "error-unattributed": e(stream_id=None, message="not a chunk: message key '../cam'",
                                time_s=0.0, seq=0, time_epoch=now, fatal=False),
        "error-fatal": e(stream_id="lobby_2", message="source x.mp4: cannot open", time_s=3.0,
                         seq=1, time_epoch=now, fatal=True, profile="facellava"),
        "error-nan": e(stream_id="cam", message="x", time_s=float("nan"), seq=0,
                       time_epoch=now, fatal=False),
        "error-negative": e(stream_id="cam", message="x", time_s=-0.04, seq=0,
                            time_epoch=now, fatal=False),
        "error-epoch-inf": e(stream_id="cam", message="x", time_s=1.0, seq=0,
                             time_epoch=float("inf"), fatal=False),
        "started": t(ended=False, stream_id="cam", track_id="t1", time_s=0.2, pts=3072,
                     time_epoch=now),
        "ended": t(ended=True, stream_id="cam", track_id="t12", time_s=61.4, pts=None,
                   time_epoch=now),
        "ended-epoch-0": t(ended=True, stream_id="cam", track_id="t2", time_s=0.0, pts=0,
                           time_epoch=0.0),
    }


def client_seeds() -> dict[str, bytes]:
    now = 1_760_000_000.25

    def entry(event: dict) -> bytes:                  # as sinks/redis_stream.py writes it
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()

    started = events.track_event(events.TRACK_STARTED, stream_id="cam", track_id="t1",
                                 time_s=0.2, pts=3072, profile="compact", time_epoch=now)
    error = events.stream_error(stream_id=events.UNATTRIBUTED, message="key '../cam' \u2028x",
                                time_s=0.0, seq=0, profile="compact", time_epoch=now,
                                fatal=False)
    return {
        "started": entry(started),
        "ended": entry(events.track_event(events.TRACK_ENDED, stream_id="cam", track_id="t1",
                                          time_s=9.9, pts=None, profile="facellava",
                                          time_epoch=0.0)),
        "error": entry(error),
        "time-offset": entry({**started, "time": "2025-10-09T10:13:20.25+05:30"}),
        "time-month-13": entry({**started, "time": "2025-13-09T10:13:20Z"}),
        "id-upper": entry({**started, "id": started["id"].upper()}),
        "no-data": entry({k: v for k, v in started.items() if k != "data"}),
        "data-key-line-break": entry({**started, "data": {**started["data"], "a\u2028b": 1}}),
        "not-json": b'{"id": ',
        "not-utf8": b'{"id": "\xff"}',
        "nested": b"[" * 5000,
    }


def dead_letter_seeds(real) -> dict[str, bytes]:
    w = fuzz_dead_letters.write_input
    small = cut(real["single_face.mp4"][0], 3_000)
    return {
        "chunk": w(limit=1_000_000, key=b"cam", value=small.payload, headers=small.headers(),
                   reason="not a chunk: fs-part '0/1' is outside 1..1", offset=41),
        "value-cut": w(limit=10_000, key=b"cam", value=b"v" * 12_000, headers=small.headers(),
                       reason="chunk 3 arrived after chunk 5 (a repeat); not analysed"),
        "limit-0": w(limit=0, key=b"k" * 300, value=b"v" * 100,
                     headers=[("h", b"x" * 2000), ("n" * 100, None)], reason="why\n" * 100),
        "no-key-no-value": w(limit=10_000, key=None, value=None, headers=[], reason=""),
        "many-headers": w(limit=10_000, key=b"cam", value=b"",
                          headers=[(f"h{i}", b"x" * 1024) for i in range(40)], reason="big"),
    }


def main() -> None:
    real = real_chunks()
    targets = {"message": message_seeds(real), "packets": packets_seeds(real),
               "decode": decode_seeds(real), "registry": registry_seeds(),
               "events": events_seeds(), "dead_letters": dead_letter_seeds(real),
               "client": client_seeds()}
    total = 0
    for target, seeds in targets.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
            total += len(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    print(f"{total} bytes in all")


if __name__ == "__main__":
    main()
