#!/usr/bin/env python3
"""Writes the hand-made seeds of the mqtt_acl, credentials and geofence targets.

mqtt_acl and credentials take a derived `Arbitrary` input, so their seeds are
written in the byte layout of arbitrary 1.x (fuzz/Cargo.lock): integers
little-endian from the front, enum variants as a u32 v with (v * n) >> 32 =
index, bool/Option/Vec continuation as one byte (& 1), and the lengths of
strings from the END of the input (one byte while the input is at most 256
bytes, which every seed here is). Check a seed with
`cargo +nightly fuzz fmt <target> fuzz/seeds/<target>/<name>`.

Run from the repository root: python3 fuzz/seeds/write_seeds.py
"""
import hashlib
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


class Enc:
    def __init__(self):
        self.front = bytearray()
        self.back = []  # length bytes, in the order they are read

    def u8(self, x):
        self.front += struct.pack("<B", x)
        return self

    def u16(self, x):
        self.front += struct.pack("<H", x)
        return self

    def u32(self, x):
        self.front += struct.pack("<I", x)
        return self

    def i64(self, x):
        self.front += struct.pack("<q", x)
        return self

    def char(self, c):
        return self.u32(ord(c))

    def bool(self, b):
        return self.u8(1 if b else 0)

    def variant(self, index, count):
        return self.u32(((2 * index + 1) << 32) // (2 * count))

    def str(self, s):
        b = s.encode()
        self.back.append(len(b))
        self.front += b
        return self

    def str_rest(self, s):
        self.front += s.encode()
        return self

    def option(self, x, f):
        self.bool(x is not None)
        if x is not None:
            f(x)
        return self

    def vec(self, items, f):
        for item in items:
            self.bool(True)
            f(item)
        return self.bool(False)

    def bytes(self):
        out = bytes(self.front) + bytes(reversed(self.back))
        assert len(out) <= 256, f"seed of {len(out)} bytes: lengths would take 2 bytes"
        assert all(n < 256 for n in self.back)
        return out


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------
# mqtt_acl

VEHICLE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_.:-AZ"
VERDICT = {"vehicle": 0, "anonymous": 1, "refused": 2}


def topic(e, t):
    """t: str (raw) or (prefix|None, vehicle|None for own, suffix, trailing)."""
    if isinstance(t, str):
        e.variant(0, 2).str(t)
        return
    prefix, vehicle, suffix, trailing = t
    e.variant(1, 2)
    e.option(prefix, e.str)
    if vehicle is None:
        e.variant(0, 2)
    else:
        e.variant(1, 2).str(vehicle)
    fixed = {"telemetry": 0, "telemetry/pb": 1, "ack": 2}
    if suffix in fixed:
        e.variant(fixed[suffix], 4)
    else:
        e.variant(3, 4).str(suffix)
    e.str(trailing)


def client_id(e, c, last=False):
    """c: ("raw", s) | ("empty",) | ("own",) | ("with", sep, suffix) | ("cut", n)."""
    kind = c[0]
    if kind == "raw":
        e.variant(0, 5)
        (e.str_rest if last else e.str)(c[1])
    elif kind == "empty":
        e.variant(1, 5)
    elif kind == "own":
        e.variant(2, 5)
    elif kind == "with":
        e.variant(3, 5).char(c[1])
        (e.str_rest if last else e.str)(c[2])
    elif kind == "cut":
        e.variant(4, 5).u8(c[1])


def op(e, o):
    kind = o[0]
    if kind == "publish":
        e.variant(0, 3)
        topic(e, o[1])
    elif kind == "subscribe":
        e.variant(1, 3)
        e.vec(o[1], lambda t: topic(e, t))
    elif kind == "at":
        e.variant(2, 3).u32(o[1])


def mqtt(prefix, vehicle, verdict, cid, will=None, ops=(), second=("own",), expires_at=None):
    e = Enc()
    e.str(prefix)
    e.vec([VEHICLE_CHARS.index(c) for c in vehicle], e.u8)
    e.variant(VERDICT[verdict], 3)
    e.option(expires_at, e.u32)
    client_id(e, cid)
    e.option(will, lambda w: topic(e, w))
    e.vec(list(ops), lambda o: op(e, o))
    client_id(e, second, last=True)
    return e.bytes()


OWN_JSON = (None, None, "telemetry", "")
OWN_PB = (None, None, "telemetry/pb", "")
OWN_ACK = (None, None, "ack", "")

write("mqtt_acl", "own_topics", mqtt(
    "fleet", "van:1", "vehicle", ("own",),
    ops=[("publish", OWN_JSON), ("publish", OWN_PB), ("subscribe", [OWN_ACK])],
))
write("mqtt_acl", "suffixed_client_id_other_vehicles", mqtt(
    "fleet", "van:1", "vehicle", ("with", "@", "phone"), will=OWN_JSON,
    ops=[
        ("publish", (None, "van:10", "telemetry", "")),
        ("publish", "fleet/van:1/telemetry/pb/x"),
        ("subscribe", [OWN_ACK, (None, "+", "ack", "")]),
        ("subscribe", ["fleet/#"]),
    ],
    second=("raw", "van:1"),
))
write("mqtt_acl", "prefix_of_other_vehicle", mqtt(
    "fleet", "van", "vehicle", ("raw", "van:1"),
))
write("mqtt_acl", "client_id_cut_and_empty_separator", mqtt(
    "fleet", "van:1", "vehicle", ("cut", 3), second=("with", ":", "1"),
))
write("mqtt_acl", "empty_client_id_foreign_will", mqtt(
    "fleet", "truck-7", "vehicle", ("empty",), will=(None, "truck-8", "telemetry", ""),
))
write("mqtt_acl", "anonymous_reserved_id", mqtt(
    "fleet", "v", "anonymous", ("raw", "!fleetpipe-ingest"),
))
write("mqtt_acl", "anonymous_anywhere", mqtt(
    "a/b", "v", "anonymous", ("raw", "dev"), will="x/y",
    ops=[("publish", "a/b/c/telemetry"), ("subscribe", ["#"])],
))
write("mqtt_acl", "refused_credentials", mqtt(
    "fleet", "v", "refused", ("own",),
))
write("mqtt_acl", "expiry", mqtt(
    "fleet", "bus_2", "vehicle", ("own",), expires_at=1000,
    ops=[("at", 999), ("publish", OWN_JSON), ("at", 1000), ("publish", OWN_JSON)],
))
write("mqtt_acl", "odd_prefixes", mqtt(
    "", "v", "vehicle", ("own",),
    ops=[
        ("publish", "/v/telemetry"),
        ("publish", ("", None, "telemetry", "")),
        ("publish", "//telemetry"),
        ("publish", ("fleet/", None, "telemetry/pb", "")),
        ("subscribe", ["/v/ack", "/v/ack"]),
        ("subscribe", []),
    ],
))

# --------------------------------------------------------------------------
# credentials

DEVICES = ["van-1", "van-2", "van:1", "truck.7"]  # as in credentials.rs


def credential(e, c):
    kind = c[0]
    if kind == "absent":
        e.variant(0, 4)
    elif kind == "raw":
        e.variant(1, 4).str(c[1])
    elif kind == "known":
        e.variant(2, 4).u8(c[1])
    elif kind == "hash_of":
        e.variant(3, 4).u8(c[1])


def claimed(e, c):
    if c is None:
        e.variant(0, 3)
    elif isinstance(c, str):
        e.variant(1, 3).str(c)
    else:
        e.variant(2, 3).u8(c)


def jwt(e, j):
    if isinstance(j, str):
        e.variant(0, 2).str(j)
        return
    e.variant(1, 2)
    e.variant({"HS256": 0, "HS384": 1, "HS512": 2}[j.get("alg", "HS256")], 3)
    e.option(j.get("other_key"), e.str)
    sub = j.get("sub")
    if sub is None:
        e.variant(0, 3)
    elif isinstance(sub, str):
        e.variant(1, 3).str(sub)
    else:
        e.variant(2, 3).i64(sub)
    exp = j.get("exp", ("future", 0))
    if exp is None:
        e.variant(0, 4)
    elif exp[0] == "past":
        e.variant(1, 4).u32(exp[1])
    elif exp[0] == "future":
        e.variant(2, 4).u32(exp[1])
    else:
        e.variant(3, 4)
    e.option(j.get("iss"), e.str)
    e.option(j.get("aud"), e.str)
    e.option(j.get("tamper"), lambda t: (e.u16(t[0]), e.char(t[1])))
    claimed(e, j.get("claimed"))


def creds(cred, claim, j, text):
    e = Enc()
    credential(e, cred)
    claimed(e, claim)
    jwt(e, j)
    e.str_rest(text)
    return e.bytes()


HASH = hashlib.sha256(b"s3cret-2").hexdigest()

write("credentials", "valid_everything", creds(
    ("known", 0), None, {"sub": "truck-7"},
    f'[[device]]\nvehicle_id = "van-1"\ntoken = "s3cret-1"\n\n[[device]]\nvehicle_id = "van-2"\ntoken_sha256 = "{HASH}"\n',
))
write("credentials", "claimed_other_vehicle_duplicate_token", creds(
    ("known", 2), 1, {"sub": "van-2", "claimed": "van-3", "iss": "x", "aud": "y"},
    '[[device]]\nvehicle_id = "a"\ntoken = "t"\n[[device]]\nvehicle_id = "b"\ntoken = "t"\n',
))
write("credentials", "unknown_token_wrong_key_bad_vehicle", creds(
    ("raw", "nope"), "van-1", {"sub": "van-1", "other_key": "not-the-secret"},
    '[[device]]\nvehicle_id = "a b"\ntoken = "t"\n',
))
write("credentials", "hash_as_token_other_alg_unknown_field", creds(
    ("hash_of", 1), None, {"sub": "van-1", "alg": "HS384"},
    '[[device]]\nvehicle = "a"\n',
))
write("credentials", "tampered_inline_table", creds(
    ("known", 3), "truck.7", {"sub": "bus_2", "tamper": (40, "A")},
    'device = [{ vehicle_id = "bus_2", token = "x" }, { vehicle_id = "bus_3", token_sha256 = "00" }]\n',
))
write("credentials", "numeric_sub_text_exp_empty_file", creds(
    ("absent",), "", {"sub": 7, "exp": ("text",)},
    "",
))
write("credentials", "expired_missing_token_both_given", creds(
    ("raw", ""), None, {"sub": "van-1", "exp": ("past", 5)},
    '[[device]]\nvehicle_id = "a"\ntoken = "t"\ntoken_sha256 = "ff"\n',
))
write("credentials", "no_exp_raw_jwt_empty_token", creds(
    ("raw", "van-2"), None, "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
    '[[device]]\nvehicle_id = "a"\ntoken = ""\n# comment\n',
))

# --------------------------------------------------------------------------
# geofence: 9 header bytes (cell size selector, two query points as u16
# pairs, see geofence.rs), then the GeoJSON text.


def fence(fid, geometry, **props):
    return {"type": "Feature", "properties": {"id": fid, **props}, "geometry": geometry}


def polygon(*rings):
    return {"type": "Polygon", "coordinates": [list(map(list, r)) for r in rings]}


def collection(*features):
    return {"type": "FeatureCollection", "features": list(features)}


def geo(name, cell, points, doc):
    header = struct.pack("<BHHHH", cell, *points)
    text = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
    write("geofence", name, header + text.encode())


SQUARE = [(10.0, 50.0), (10.01, 50.0), (10.01, 50.01), (10.0, 50.01), (10.0, 50.0)]
HOLE = [(10.004, 50.004), (10.006, 50.004), (10.006, 50.006), (10.004, 50.006), (10.004, 50.004)]
MID = 0x5555  # fraction 1/3 of the grown box: the fence's own box starts at 1/4

geo("polygon_with_hole", 3, (MID, MID, 0x8000, 0x8000), collection(
    fence("depot-1", polygon(SQUARE, HOLE), name="Main depot", kind="depot",
          speed_limit_kmh=20.0, dwell_s=300, arrival=True),
))
geo("multipolygon_and_circle", 2, (0, 0xFFFF, 0x7000, 0x9000), collection(
    fence("zone-2", {"type": "MultiPolygon", "coordinates": [
        [[[11.0, 51.0], [11.02, 51.0], [11.02, 51.02], [11.0, 51.0]]],
        [[[12.0, 51.0], [12.02, 51.0], [12.02, 51.02], [12.0, 51.02], [12.0, 51.0]],
         [[12.005, 51.005], [12.015, 51.005], [12.015, 51.015], [12.005, 51.015], [12.005, 51.005]]],
    ]}, kind="weird"),
    fence("charger-3", {"type": "Point", "coordinates": [13.0, 52.0]}, radius_m=500.0,
          kind="charging_station"),
))
geo("overlapping_and_touching", 0, (0x8000, 0x4000, 0x4000, 0x8000), collection(
    fence("a", polygon(SQUARE)),
    fence("b", polygon([(10.01, 50.0), (10.02, 50.0), (10.02, 50.01), (10.01, 50.01)])),
    fence("c", polygon([(10.005, 50.005), (10.015, 50.005), (10.01, 50.02)])),
    fence("d", {"type": "Point", "coordinates": [10.01, 50.01]}, radius_m=300),
))
geo("concave_unclosed_ring", 1, (0x6000, 0x6000, 0xA000, 0x3000), collection(
    fence("zigzag", polygon([(0, 0), (0.01, 0.005), (0.02, 0), (0.03, 0.005), (0.04, 0),
                             (0.04, 0.02), (0, 0.02)])),
))
geo("large_fences", 7, (0x1000, 0xF000, 0xC000, 0x2000), collection(
    fence("country", polygon([(5.9, 47.3), (15.0, 47.3), (15.0, 55.0), (5.9, 55.0), (5.9, 47.3)])),
    fence("big-circle", {"type": "Point", "coordinates": [0.0, 0.0]}, radius_m=1000000),
    fence("wide", polygon([(-90, -80), (90, -80), (90, 80), (-90, 80)])),
))
geo("limits_and_tiny_circle", 5, (0x8000, 0x8000, 0, 0), collection(
    fence("north", polygon([(179.99, 84.99), (180, 84.99), (180, 85), (179.99, 85)])),
    fence("tiny", {"type": "Point", "coordinates": [-179.9, -84.0]}, radius_m=0.001),
    fence("degenerate", polygon([(1, 1), (2, 2), (3, 3)])),
))
geo("duplicate_id", 3, (0, 0, 0, 0), collection(
    fence("x", polygon(SQUARE)), fence("x", polygon(SQUARE)),
))
geo("antimeridian_and_polar", 3, (0, 0, 0, 0), collection(
    fence("am", polygon([(-179, 0), (179, 0), (179, 1)])),
    fence("pole", {"type": "Point", "coordinates": [0, 84.9]}, radius_m=50000),
))
geo("not_a_collection", 3, (0, 0, 0, 0), '{"type":"Feature","features":[]}')
