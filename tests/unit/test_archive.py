"""Provider archives without processes: nkeys, wascap JWTs, the PAR layout, the stub's header,
the CA choice and the build's keys and metadata."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import json
import ssl
import stat
import tarfile
from pathlib import Path

import nkeys as pypi_nkeys
import pytest

from provider import nkeys
from provider.archive import build, certs, jwt, par, stub
from provider.errors import ArchiveError, InvalidKey

ROOT = Path(__file__).resolve().parents[2]
VECTOR = json.loads((ROOT / "tests" / "vectors" / "wascap-provider-jwt.json").read_text())
NOW = 1_800_000_000
TARGET = "x86_64-linux"
BINARY = b"#!/bin/sh\necho provider\n" + bytes(range(256)) * 64

ISSUER = nkeys.KeyPair.generate(nkeys.ACCOUNT)
SUBJECT = nkeys.KeyPair.generate(nkeys.SERVICE)


def archive_bytes(binaries: dict[str, bytes] | None = None, **options: object) -> bytes:
    settings: dict[str, object] = {
        "name": "ws",
        "vendor": "tests",
        "version": "1.2.3",
        "binaries": binaries if binaries is not None else {TARGET: BINARY},
        "issuer": ISSUER,
        "subject": SUBJECT.public,
        "issued_at": NOW - 10,
    }
    settings.update(options)
    return par.build(**settings)  # type: ignore[arg-type]


def entries(data: bytes) -> list[tuple[str, bytes, int]]:
    """The archive's entries, in order, to be altered and packed again."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        found = []
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            found.append((member.name, extracted.read(), member.mode))
        return found


def claims_of(data: bytes) -> str:
    return next(content for name, content, _ in entries(data) if name == "claims.jwt").decode()


def segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# -- nkeys ---------------------------------------------------------------------------------------------


def test_crc16_xmodem_check_value() -> None:
    """The CRC-16/XMODEM check value: "123456789" → 0x31C3."""
    assert nkeys.crc16(b"123456789") == 0x31C3
    assert nkeys.crc16(b"") == 0


@pytest.mark.parametrize(
    ("prefix", "letter"),
    [(nkeys.ACCOUNT, "A"), (nkeys.SERVICE, "V"), (nkeys.SERVER, "N"), (nkeys.USER, "U"), (nkeys.CURVE, "X")],
)
def test_keys_round_trip_with_their_type_letter(prefix: int, letter: str) -> None:
    """A public key and a seed encode to text starting with their type and decode back."""
    raw = bytes(range(32))
    public = nkeys.encode_public(prefix, raw)
    seed = nkeys.encode_seed(prefix, raw)
    assert public[0] == letter
    assert seed[:2] == "S" + letter
    assert len(public) == 56
    assert len(seed) == 58
    assert nkeys.decode_public(public, prefix) == raw
    assert nkeys.decode_seed(seed, prefix) == raw
    assert nkeys.seed_type(seed) == prefix


def test_account_and_user_keys_agree_with_the_pypi_nkeys_library() -> None:
    """Seeds made here give the public keys the NATS nkeys library derives from them."""
    for prefix in (nkeys.ACCOUNT, nkeys.USER):
        pair = nkeys.KeyPair.generate(prefix)
        theirs = pypi_nkeys.from_seed(bytearray(pair.seed.encode()))
        assert theirs.public_key.decode() == pair.public
        assert theirs.verify(b"data", pair.sign(b"data"))


def test_the_rust_vectors_keys_decode_with_their_checksums() -> None:
    """The account and service keys of the Rust-signed vector decode; one changed character does not."""
    assert len(nkeys.decode_public(VECTOR["issuer"], nkeys.ACCOUNT)) == 32
    assert len(nkeys.decode_public(VECTOR["subject"], nkeys.SERVICE)) == 32
    altered = VECTOR["issuer"][:10] + ("A" if VECTOR["issuer"][10] != "A" else "B") + VECTOR["issuer"][11:]
    with pytest.raises(InvalidKey, match="bad checksum"):
        nkeys.decode_public(altered, nkeys.ACCOUNT)


@pytest.mark.parametrize(
    ("text", "prefix", "message"),
    [
        (SUBJECT.public, nkeys.ACCOUNT, r"must be an account key \(A…\), got a service key \(V…\)"),
        (ISSUER.public, nkeys.SERVICE, r"must be a service key \(V…\), got an account key \(A…\)"),
        (ISSUER.seed, nkeys.ACCOUNT, "must be an account key"),
        ("not base32 at all!", nkeys.ACCOUNT, "not base32"),
        ("AB", nkeys.ACCOUNT, "bad checksum"),
        ("", nkeys.ACCOUNT, "bad checksum"),
    ],
    ids=["service-for-account", "account-for-service", "seed-for-public", "garbage", "short", "empty"],
)
def test_bad_public_keys_are_refused_with_the_reason(text: str, prefix: int, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        nkeys.decode_public(text, prefix)


def test_a_seed_of_another_type_is_refused() -> None:
    """An account seed is not a service seed (the prefix bytes differ, the checksum holds)."""
    with pytest.raises(InvalidKey, match="seed of a service key"):
        nkeys.KeyPair.from_seed(ISSUER.seed, nkeys.SERVICE)
    with pytest.raises(InvalidKey, match="not a seed"):
        nkeys.seed_type(ISSUER.public)


def test_a_key_pairs_repr_shows_no_seed() -> None:
    assert ISSUER.seed not in repr(ISSUER)
    assert ISSUER.public in repr(ISSUER)


def test_signatures_verify_only_with_the_signers_key() -> None:
    signature = ISSUER.sign(b"message")
    assert nkeys.verify(ISSUER.public, nkeys.ACCOUNT, b"message", signature)
    assert not nkeys.verify(ISSUER.public, nkeys.ACCOUNT, b"messagE", signature)
    other = nkeys.KeyPair.generate(nkeys.ACCOUNT)
    assert not nkeys.verify(other.public, nkeys.ACCOUNT, b"message", signature)
    assert not nkeys.verify(ISSUER.public, nkeys.ACCOUNT, b"message", signature[:10])


# -- wascap JWTs -------------------------------------------------------------------------------------


def test_the_rust_signed_vector_verifies_and_decodes() -> None:
    """A provider JWT signed by wasmCloud's Rust wascap verifies here; its claims decode (its
    pre-1.0 capid is ignored)."""
    assert jwt.problems(VECTOR["token"], NOW) == []
    claims = jwt.verify(VECTOR["token"], NOW)
    assert (claims.issuer, claims.subject) == (VECTOR["issuer"], VECTOR["subject"])
    assert (claims.jti, claims.issued_at) == (VECTOR["jti"], VECTOR["iat"])
    assert (claims.name, claims.vendor, claims.revision, claims.version) == (
        VECTOR["name"],
        VECTOR["vendor"],
        VECTOR["rev"],
        VECTOR["ver"],
    )
    assert claims.target_hashes == {}
    assert claims.wascap_revision is None


def test_the_rust_vector_with_altered_claims_no_longer_verifies() -> None:
    """Claims changed after signing (a target hash added) fail the issuer's signature."""
    head, body, signature = VECTOR["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["wascap"]["target_hashes"] = {TARGET: "00" * 32}
    forged = f"{head}.{segment(claims)}.{signature}"
    assert jwt.decode(forged).target_hashes == {TARGET: "00" * 32}  # what a host reads, unverified
    assert jwt.problems(forged, NOW) == [
        f"the signature is not {VECTOR['issuer']}'s (forged or altered claims)"
    ]


def claims(**changes: object) -> jwt.ProviderClaims:
    made = jwt.new_claims(
        name="ws",
        vendor="tests",
        issuer=ISSUER.public,
        subject=SUBJECT.public,
        target_hashes={TARGET: par.sha256_hex(BINARY)},
        issued_at=NOW - 10,
        version="1.2.3",
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def test_a_token_signed_here_has_wascaps_header_and_claims() -> None:
    token = jwt.encode(claims(), ISSUER)
    head, body, _ = token.split(".")
    assert "=" not in token
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {"typ": "jwt", "alg": "Ed25519"}
    decoded = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert list(decoded) == ["jti", "iat", "iss", "sub", "wascap", "wascap_revision"]
    assert list(decoded["wascap"]) == ["name", "vendor", "ver", "target_hashes"]
    assert decoded["wascap_revision"] == 3
    assert jwt.verify(token, NOW) == claims()


def test_the_same_inputs_give_the_same_token_and_another_time_another_id() -> None:
    """jti comes from the contents: signing is reproducible, ids differ between builds."""
    assert jwt.encode(claims(), ISSUER) == jwt.encode(claims(), ISSUER)
    later = jwt.new_claims(
        name="ws",
        vendor="tests",
        issuer=ISSUER.public,
        subject=SUBJECT.public,
        target_hashes={TARGET: par.sha256_hex(BINARY)},
        issued_at=NOW,
        version="1.2.3",
    )
    assert later.jti != claims().jti
    assert len(later.jti) == 22


def test_a_forged_signature_is_found() -> None:
    """Claims naming one issuer but signed by another account key fail verification."""
    impostor = nkeys.KeyPair.generate(nkeys.ACCOUNT)
    head, body, _ = jwt.encode(claims(), ISSUER).split(".")
    forged_signature = base64.urlsafe_b64encode(impostor.sign(f"{head}.{body}".encode())).decode().rstrip("=")
    found = jwt.problems(f"{head}.{body}.{forged_signature}", NOW)
    assert found == [f"the signature is not {ISSUER.public}'s (forged or altered claims)"]
    with pytest.raises(ArchiveError, match="forged or altered"):
        jwt.verify(f"{head}.{body}.{forged_signature}", NOW)


def test_encode_refuses_a_key_that_is_not_the_claims_issuer() -> None:
    with pytest.raises(ArchiveError, match="as issuer, but the key is"):
        jwt.encode(claims(), nkeys.KeyPair.generate(nkeys.ACCOUNT))
    with pytest.raises(ArchiveError, match="must be an account key"):
        jwt.encode(claims(issuer=SUBJECT.public), SUBJECT)


def sign_raw(claims_json: dict[str, object], header: object = None, key: nkeys.KeyPair = ISSUER) -> str:
    signed = f"{segment(header or jwt.HEADER)}.{segment(claims_json)}"
    return f"{signed}.{base64.urlsafe_b64encode(key.sign(signed.encode())).decode().rstrip('=')}"


def test_wrong_key_prefixes_are_found() -> None:
    """The issuer must be an account key and the subject a service key, as wash makes them."""
    wrong_subject = claims(subject=nkeys.KeyPair.generate(nkeys.MODULE).public).to_json()
    assert jwt.problems(sign_raw(wrong_subject), NOW) == [
        "the subject (sub) must be a service key (V…), got a module key (M…)"
    ]
    user = nkeys.KeyPair.generate(nkeys.USER)
    wrong_issuer = claims(issuer=user.public).to_json()
    assert jwt.problems(sign_raw(wrong_issuer, key=user), NOW) == [
        "the issuer (iss) must be an account key (A…), got a user key (U…)"
    ]


def test_header_and_validity_window_are_checked() -> None:
    body = claims().to_json()
    assert jwt.problems(sign_raw(body, header={"typ": "jwt", "alg": "HS256"}), NOW) == [
        'the header is {"typ":"jwt","alg":"HS256"}, not {"typ":"jwt","alg":"Ed25519"}'
    ]
    assert jwt.problems(sign_raw({**body, "exp": NOW - 1}), NOW) == [
        f"the claims expired at {NOW - 1} (now {NOW})"
    ]
    assert jwt.problems(sign_raw({**body, "nbf": NOW + 60}), NOW) == [
        f"the claims are not valid before {NOW + 60} (now {NOW})"
    ]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("a.b", "3 segments, this one 2"),
        ("a.b.c.d", "3 segments, this one 4"),
        ("x.!!!.y", "claims segment is not base64url"),
        (f"x.{base64.urlsafe_b64encode(b'not json').decode()}.y", "not JSON"),
        (f"x.{segment([1, 2])}.y", "not a JSON object"),
        (f"x.{segment({'iat': 1, 'iss': 'A', 'sub': 'V', 'jti': 'j'})}.y", "no wascap object"),
        (f"x.{segment({'iat': 1, 'wascap': {'vendor': 'v'}})}.y", "target_hashes is missing"),
        (
            f"x.{segment({'iat': 'soon', 'wascap': {'vendor': 'v', 'target_hashes': {}}})}.y",
            "iat has the wrong type",
        ),
        (f"x.{segment({'iat': 1, 'wascap': {'vendor': 'v', 'target_hashes': {'a': 1}}})}.y", "map strings"),
    ],
    ids=["two", "four", "base64", "json", "array", "no-wascap", "no-hashes", "iat", "hash-type"],
)
def test_undecodable_tokens_raise_archive_error(token: str, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        jwt.decode(token)


# -- the PAR layout ----------------------------------------------------------------------------------


def test_an_archive_built_here_reads_back_and_verifies() -> None:
    """claims.jwt first, then the binary (mode 0755); gzip'd; hashes and signature check."""
    data = archive_bytes()
    assert data[:2] == par.GZIP_MAGIC
    assert [(name, mode) for name, _, mode in entries(data)] == [
        ("claims.jwt", 0o644),
        (f"{TARGET}.bin", 0o755),
    ]
    archive = par.verify(data, now=NOW, target=TARGET)
    assert archive.binaries == {TARGET: BINARY}
    assert archive.claims.target_hashes == {TARGET: par.sha256_hex(BINARY)}
    assert archive.claims.target_hashes[TARGET].isupper()
    assert par.load_target(data, TARGET) == BINARY


def test_archives_are_reproducible_and_load_uncompressed_too() -> None:
    """Same inputs, same bytes; a plain tar (no gzip) reads the same (the host sniffs 1f 8b)."""
    assert archive_bytes() == archive_bytes()
    plain = archive_bytes(compress=False)
    assert plain[:2] != par.GZIP_MAGIC
    assert gzip.decompress(archive_bytes()) == plain
    assert par.verify(plain, now=NOW).binaries == {TARGET: BINARY}


def test_a_tampered_binary_is_refused_by_the_host_check_and_by_inspect() -> None:
    """One byte changed in the binary: its SHA-256 no longer matches the signed claims."""
    altered = [
        (name, content[:-1] + b"!" if name.endswith(".bin") else content, mode)
        for name, content, mode in entries(archive_bytes())
    ]
    data = par.pack(altered, compress=True)
    with pytest.raises(ArchiveError, match=rf"{TARGET}: SHA-256 [0-9A-F]{{64}} differs from the claims'"):
        par.load_target(data, TARGET)
    found = par.problems(par.read(data), now=NOW)
    assert len(found) == 1
    assert "the binary was altered" in found[0]


def test_a_missing_target_is_found() -> None:
    """The claims hash x86_64-linux, but its binary was dropped (an aarch64 one is there)."""
    data = archive_bytes({TARGET: BINARY, "aarch64-linux": b"other"})
    kept = [entry for entry in entries(data) if entry[0] != f"{TARGET}.bin"]
    stripped = par.pack(kept, compress=False)
    with pytest.raises(ArchiveError, match=rf"no {TARGET}\.bin in the archive \(targets: aarch64-linux\)"):
        par.load_target(stripped, TARGET)
    assert par.problems(par.read(stripped), now=NOW, target=TARGET) == [
        f"no {TARGET}.bin in the archive (targets: aarch64-linux)",
        f"the claims hash target {TARGET}, whose {TARGET}.bin is not in the archive",
    ]
    only_claims = par.pack(kept[:1], compress=False)
    assert "the archive has no target binary (<arch>-<os>.bin)" in par.problems(
        par.read(only_claims), now=NOW
    )


def test_a_binary_without_a_hash_and_a_lower_case_hash_are_found() -> None:
    token = claims_of(archive_bytes())
    _, body, _ = token.split(".")
    claims_json = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims_json["wascap"]["target_hashes"] = {TARGET: par.sha256_hex(BINARY).lower()}
    lower = par.pack(
        [("claims.jwt", sign_raw(claims_json).encode(), 0o644), (f"{TARGET}.bin", BINARY, 0o755)],
        compress=True,
    )
    with pytest.raises(ArchiveError, match="not upper-case hex"):
        par.load_target(lower, TARGET)
    extra = par.pack(
        [
            ("claims.jwt", token.encode(), 0o644),
            ("aarch64-linux.bin", b"x", 0o755),
            (f"{TARGET}.bin", BINARY, 0o755),
        ],
        compress=False,
    )
    assert par.problems(par.read(extra), now=NOW) == [
        "aarch64-linux: no hash in the claims' target_hashes (a 1.9 host panics on this)"
    ]


def test_a_forged_claims_file_in_an_archive_is_found() -> None:
    """An attacker swaps the binary and writes matching hashes, but cannot sign as the issuer."""
    evil = b"#!/bin/sh\necho evil\n"
    impostor = nkeys.KeyPair.generate(nkeys.ACCOUNT)
    forged = claims(target_hashes={TARGET: par.sha256_hex(evil)}).to_json()
    data = par.pack(
        [("claims.jwt", sign_raw(forged, key=impostor).encode(), 0o644), (f"{TARGET}.bin", evil, 0o755)],
        compress=True,
    )
    assert par.load_target(data, TARGET) == evil  # a 1.9 host checks hashes only, and would run it
    assert par.problems(par.read(data), now=NOW) == [
        f"the signature is not {ISSUER.public}'s (forged or altered claims)"
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not enough bytes"),
        (b"\x1f\x8bnot really gzip", "not a provider archive"),
        (b"x" * 2048, "not a provider archive"),
        (par.pack([(f"{TARGET}.bin", BINARY, 0o755)], compress=True), "no claims.jwt"),
        (par.pack([("claims.jwt", b"\xff\xfe", 0o644)], compress=False), "not ASCII"),
    ],
    ids=["empty", "bad-gzip", "not-tar", "no-claims", "binary-claims"],
)
def test_files_that_are_not_archives_raise_archive_error(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        par.read(data)


def test_odd_entries_are_refused() -> None:
    """A directory entry, and a target that appears twice."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("x86_64-linux.bin")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="is not a regular file"):
        par.read(buffer.getvalue())
    token = claims_of(archive_bytes()).encode()
    twice = par.pack(
        [
            ("claims.jwt", token, 0o644),
            ("a/x86_64-linux.bin", b"1", 0o755),
            ("x86_64-linux.bin", b"2", 0o755),
        ],
        compress=False,
    )
    with pytest.raises(ArchiveError, match="a second entry for target 'x86_64-linux'"):
        par.read(twice)


def test_an_archive_that_unpacks_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip bomb is refused by the sizes in its headers, before it is read into memory."""
    monkeypatch.setattr(par, "MAX_BYTES", 1000)
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        par.read(archive_bytes({TARGET: b"\0" * 5000}))


def test_build_refuses_what_no_host_could_use() -> None:
    with pytest.raises(ArchiveError, match="at least one target binary"):
        archive_bytes({})
    with pytest.raises(ArchiveError, match="is not a target name"):
        archive_bytes({"claims": b"x"})
    with pytest.raises(InvalidKey, match="must be a service key"):
        archive_bytes(subject=ISSUER.public)


# -- the stub ----------------------------------------------------------------------------------------


def test_the_stub_names_its_payload_and_where_it_starts() -> None:
    payload = gzip.compress(b"bundle bytes", mtime=0)
    key = "ab" * 32
    executable = stub.wrap(payload, key, version="1.2.3", target=TARGET, glibc="2.35")
    assert executable.startswith(b"#!/bin/sh\n")
    info = stub.parse(executable)
    assert info == stub.StubInfo(
        "wasmcloud-ws-provider", "1.2.3", TARGET, "2.35", key, info.offset if info else 0
    )
    assert info is not None
    assert stub.payload(executable, info) == payload
    assert executable[: info.offset].endswith(b"\n")
    assert f"offset={info.offset}\n".encode() in executable[: info.offset]


def test_other_executables_have_no_stub_header() -> None:
    assert stub.parse(b"#!/bin/sh\nexec python -m provider\n") is None
    assert stub.parse(b"\x7fELF") is None


@pytest.mark.parametrize(
    ("key", "version", "glibc", "message"),
    [
        ("AB" * 32, "1.0", "2.35", "lower-case hex"),
        ("ab" * 31, "1.0", "2.35", "lower-case hex"),
        ("ab" * 32, "1 0; rm -rf /", "2.35", "cannot go into the stub's header"),
        ("ab" * 32, "1.0", "new", "is not MAJOR.MINOR"),
    ],
    ids=["upper-key", "short-key", "shell-in-version", "glibc"],
)
def test_the_stub_refuses_values_that_could_break_its_script(
    key: str, version: str, glibc: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stub.wrap(b"", key, version=version, target=TARGET, glibc=glibc)


# -- CA certificates ---------------------------------------------------------------------------------


def choose(
    environ: dict[str, str], files: set[str], dirs: frozenset[str] = frozenset(), shipped: str | None = None
) -> certs.CaChoice:
    return certs.choose(
        environ,
        "/usr/lib/ssl/cert.pem",
        "/usr/lib/ssl/certs",
        is_file=lambda p: p in files,
        has_certificates=lambda d: d in dirs,
        bundled=lambda: shipped,
    )


def test_the_operators_environment_wins() -> None:
    choice = choose({"SSL_CERT_FILE": "/opt/ca.pem"}, {"/usr/lib/ssl/cert.pem"})
    assert (choice.path, choice.point_openssl_at_it) == ("/opt/ca.pem", False)


def test_openssls_default_is_used_where_it_exists() -> None:
    choice = choose({}, {"/usr/lib/ssl/cert.pem", "/etc/pki/tls/certs/ca-bundle.crt"})
    assert (choice.path, choice.point_openssl_at_it) == ("/usr/lib/ssl/cert.pem", False)


def test_a_fedora_host_gets_its_own_bundle() -> None:
    """No /usr/lib/ssl (a Debian build on RHEL): the host's bundle, given to OpenSSL by SSL_CERT_FILE."""
    choice = choose({}, {"/etc/pki/tls/certs/ca-bundle.crt"}, shipped="/bundle/cacert.pem")
    assert (choice.path, choice.point_openssl_at_it) == ("/etc/pki/tls/certs/ca-bundle.crt", True)


def test_without_any_system_store_the_shipped_bundle_is_used() -> None:
    assert choose({}, set(), shipped="/bundle/cacert.pem").path == "/bundle/cacert.pem"
    assert (
        choose({}, set(), dirs=frozenset({"/usr/lib/ssl/certs"}), shipped="/b").path == "/usr/lib/ssl/certs"
    )
    nothing = choose({}, set())
    assert nothing.path is None
    assert "TLS_CA" in str(nothing)


def test_configure_points_openssl_at_what_it_chose(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """configure() sets SSL_CERT_FILE only when OpenSSL would not find the file by itself."""
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_text("")
    monkeypatch.setattr(certs, "SYSTEM_BUNDLES", (str(bundle),))
    paths = ssl.DefaultVerifyPaths(
        "", "", "SSL_CERT_FILE", str(tmp_path / "none.pem"), "SSL_CERT_DIR", str(tmp_path / "none")
    )
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    environ: dict[str, str] = {}
    choice = certs.configure(environ)
    assert choice.path == str(bundle)
    assert environ == {"SSL_CERT_FILE": str(bundle)}


# -- the build's metadata and keys -------------------------------------------------------------------


def test_metadata_comes_from_pyproject() -> None:
    meta = build.metadata(ROOT)
    assert meta.name == "wasmcloud-websocket-provider"
    assert meta.vendor
    assert meta.version.count(".") == 2


def test_keys_are_generated_once_into_dot_keys_with_mode_0600(tmp_path: Path) -> None:
    first = build.keys(tmp_path, {})
    second = build.keys(tmp_path, {})
    assert first.issuer.public == second.issuer.public
    assert first.subject == second.subject
    assert first.issuer.public.startswith("A")
    assert first.subject.startswith("V")
    for name in ("issuer.nk", "subject.nk"):
        mode = stat.S_IMODE((tmp_path / ".keys" / name).stat().st_mode)
        assert mode == 0o600
    assert stat.S_IMODE((tmp_path / ".keys").stat().st_mode) == 0o700
    assert first.issuer.seed not in repr(first)


def test_keys_from_the_environment_as_wash_takes_them(tmp_path: Path) -> None:
    """WASH_ISSUER_KEY as a seed, WASH_SUBJECT_KEY as a file holding a seed, or a public key."""
    seed_file = tmp_path / "subject.nk"
    seed_file.write_text(SUBJECT.seed + "\n")
    chosen = build.keys(tmp_path, {"WASH_ISSUER_KEY": ISSUER.seed, "WASH_SUBJECT_KEY": str(seed_file)})
    assert (chosen.issuer.public, chosen.subject) == (ISSUER.public, SUBJECT.public)
    assert "issuer from WASH_ISSUER_KEY" in chosen.origin
    public = build.keys(tmp_path, {"WASH_ISSUER_KEY": ISSUER.seed, "WASH_SUBJECT_KEY": SUBJECT.public})
    assert public.subject == SUBJECT.public
    assert not (tmp_path / ".keys").exists()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WASH_ISSUER_KEY": SUBJECT.seed}, "the issuer .* must be the seed of an account key"),
        ({"WASH_ISSUER_KEY": ISSUER.seed, "WASH_SUBJECT_KEY": ISSUER.public}, "must be a service key"),
        ({"WASH_ISSUER_KEY": "nonsense"}, "not base32|bad checksum"),
    ],
    ids=["service-seed-as-issuer", "account-as-subject", "garbage"],
)
def test_wrong_keys_in_the_environment_are_refused(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        build.keys(tmp_path, environ)


def test_source_date_epoch_fixes_the_signing_time() -> None:
    assert build.issued_at({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    with pytest.raises(ArchiveError, match="SOURCE_DATE_EPOCH"):
        build.issued_at({"SOURCE_DATE_EPOCH": "yesterday"})
