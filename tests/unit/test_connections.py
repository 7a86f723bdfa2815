import ssl

import pytest

from inferfleet.connections import plain_url, tls_options
from inferfleet.errors import ConfigurationError


def test_plain_urls_have_no_tls() -> None:
    assert tls_options("redis://h:6379/0") is None


def test_rediss_checks_certificates_and_hostnames_unless_told_not_to() -> None:
    url = "rediss://u:p@h:6380/1?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    assert tls_options(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
                                "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem",
                                "ssl_keyfile": "/k.pem"}
    assert plain_url(url) == "rediss://u:p@h:6380/1"
    assert tls_options("rediss://h/0?ssl_cert_reqs=CERT_NONE") == {
        "ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    assert plain_url("rediss://h/0?ssl_cert_reqs=none&health=1") == "rediss://h/0?health=1"


def test_an_unknown_cert_requirement_is_refused_by_name_without_the_password() -> None:
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs must be one of") as refused:
        tls_options("rediss://u:secret@h/0?ssl_cert_reqs=optional")
    assert "secret" not in str(refused.value)
