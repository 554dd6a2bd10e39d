"""The tests' port picker: two servers started by one test never get the same port."""

from tests.conftest import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    """The kernel's pick for a port-0 bind is random within the ephemeral range (about 28 000
    ports), so 1000 picks repeat one almost surely; none of them may come back twice."""
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
