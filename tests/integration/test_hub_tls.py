"""TLS on both listeners of a real hub: certificates made here, clients with and without the CA,
and mutual TLS refusing a client that shows no certificate."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.broker import free_port
from tests.support.hub import HubProcess, add_model

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("hub test CA")
    other, _ = _ca("some other CA")
    server, server_key = _leaf("hub", ca, ca_key, server=True)
    client, client_key = _leaf("app", ca, ca_key, server=False)
    return Pki(
        ca=_write_cert(folder / "ca.pem", ca),
        server_cert=_write_cert(folder / "server.pem", server),
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=_write_cert(folder / "client.pem", client),
        client_key=_write_key(folder / "client.key", client_key),
        other_ca=_write_cert(folder / "other-ca.pem", other),
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "add_sub", {"backend": "onnxruntime", "max_batch_size": 8}, onnx_models.add_sub)
    return repo


def _context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _start(
    repository: Path, workdir: Path, tls: dict[str, str], context: ssl.SSLContext
) -> HubProcess:
    hub = HubProcess(
        repository=repository,
        workdir=workdir,
        config={"tls": tls},
        grpc_port=free_port(),
        ssl_context=context,
    )
    hub.start()
    return hub


@pytest.fixture(scope="module")
def tls_hub(
    repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    hub = _start(
        repository,
        tmp_path_factory.mktemp("tls"),
        {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        _context(pki.ca),
    )
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def mtls_hub(
    repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubProcess]:
    hub = _start(
        repository,
        tmp_path_factory.mktemp("mtls"),
        {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_ca_file": str(pki.ca),
        },
        _context(pki.ca, pki.client_cert, pki.client_key),
    )
    yield hub
    hub.stop()


def _https_infer(hub: HubProcess, context: ssl.SSLContext) -> list[float]:
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    conn = http.client.HTTPSConnection("127.0.0.1", hub.port, timeout=10, context=context)
    try:
        conn.request("POST", "/v2/models/add_sub/infer", body=body)
        reply = conn.getresponse()
        assert reply.status == 200
        data: list[float] = json.loads(reply.read())["outputs"][0]["data"]
        return data
    finally:
        conn.close()


def _grpc_infer(hub: HubProcess, **tls: str) -> np.ndarray:
    client = triton.InferenceServerClient(hub.grpc_url, ssl=True, **tls)
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        inputs = [triton.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for tin in inputs:
            tin.set_data_from_numpy(x)
        result: np.ndarray = client.infer("add_sub", inputs, client_timeout=10).as_numpy("OUTPUT0")
        return result
    finally:
        client.close()


def test_https_with_the_ca(tls_hub: HubProcess, pki: Pki) -> None:
    assert _https_infer(tls_hub, _context(pki.ca)) == [2, 4, 6, 8]


def test_https_without_the_ca_fails_the_handshake(tls_hub: HubProcess, pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _https_infer(tls_hub, _context(pki.other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        _https_infer(tls_hub, ssl.create_default_context())


def test_plain_http_to_a_tls_listener_gets_nothing(tls_hub: HubProcess, pki: Pki) -> None:
    def plain_get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", tls_hub.port, timeout=10)
        try:
            conn.request("GET", "/v2/health/live")
            return conn.getresponse().status
        finally:
            conn.close()

    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain_get()
    assert _https_infer(tls_hub, _context(pki.ca)) == [2, 4, 6, 8]


def test_grpc_with_the_ca(tls_hub: HubProcess, pki: Pki) -> None:
    out = _grpc_infer(tls_hub, root_certificates=str(pki.ca))
    np.testing.assert_array_equal(out, np.array([[0, 2, 4, 6]], np.float32))


def test_grpc_without_the_ca_fails_the_handshake(tls_hub: HubProcess, pki: Pki) -> None:
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(tls_hub, root_certificates=str(pki.other_ca))
    assert "UNAVAILABLE" in str(info.value.status())
    plain = triton.InferenceServerClient(tls_hub.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
    finally:
        plain.close()


def test_mutual_tls_over_https(mtls_hub: HubProcess, pki: Pki) -> None:
    assert _https_infer(mtls_hub, _context(pki.ca, pki.client_cert, pki.client_key)) == [
        2,
        4,
        6,
        8,
    ]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _https_infer(mtls_hub, _context(pki.ca))


def test_mutual_tls_over_grpc(mtls_hub: HubProcess, pki: Pki) -> None:
    out = _grpc_infer(
        mtls_hub,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )
    np.testing.assert_array_equal(out, np.array([[0, 2, 4, 6]], np.float32))
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(mtls_hub, root_certificates=str(pki.ca))
    assert "UNAVAILABLE" in str(info.value.status())
    # The listener keeps serving those who do present a certificate.
    _grpc_infer(
        mtls_hub,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )


# -- renewed certificates, picked up while serving --------------------------------------------------


def _served_certificate(hub: HubProcess, context: ssl.SSLContext) -> x509.Certificate:
    import socket

    with (
        socket.create_connection(("127.0.0.1", hub.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_renewed_files_are_served_without_a_restart(
    repository: Path, pki: Pki, tmp_path: Path
) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    cert, key = folder / "tls.crt", folder / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    old_ca = _context(pki.ca)
    hub = _start(
        repository,
        tmp_path,
        {"cert_file": str(cert), "key_file": str(key), "reload_check_s": 0.2},
        old_ca,
    )
    try:
        before = _served_certificate(hub, old_ca)
        keep_alive = http.client.HTTPSConnection("127.0.0.1", hub.port, timeout=10, context=old_ca)
        keep_alive.request("GET", "/v2/health/ready")
        assert keep_alive.getresponse().read()
        channel = triton.InferenceServerClient(
            hub.grpc_url, ssl=True, root_certificates=str(pki.ca)
        )
        assert channel.is_server_ready()

        # A mismatched pair (a half-finished renewal) is refused; the old files keep serving.
        other_ca, other_ca_key = _ca("renewal CA")
        renewed, renewed_key = _leaf("hub", other_ca, other_ca_key, server=True)
        _write_cert(cert, renewed)
        time.sleep(0.5)
        assert _served_certificate(hub, old_ca).serial_number == before.serial_number
        np.testing.assert_array_equal(
            _grpc_infer(hub, root_certificates=str(pki.ca)),
            np.array([[0, 2, 4, 6]], np.float32),
        )

        # The matching key arrives: new handshakes get the renewed certificate.
        _write_key(key, renewed_key)
        new_ca = _write_cert(tmp_path / "renewal-ca.pem", other_ca)
        time.sleep(0.5)
        served = _served_certificate(hub, _context(new_ca))
        assert served.serial_number == renewed.serial_number
        with pytest.raises(ssl.SSLCertVerificationError):
            _served_certificate(hub, old_ca)
        np.testing.assert_array_equal(
            _grpc_infer(hub, root_certificates=str(new_ca)),
            np.array([[0, 2, 4, 6]], np.float32),
        )
        with pytest.raises(InferenceServerException):
            _grpc_infer(hub, root_certificates=str(pki.ca))

        # Connections opened before the renewal keep working.
        keep_alive.request("GET", "/v2/health/ready")
        assert keep_alive.getresponse().status == 200
        assert channel.is_server_ready()
        channel.close()
        keep_alive.close()
    finally:
        hub.stop()
    assert "do not load" in hub.log
    assert "reloaded the certificate" in hub.log
