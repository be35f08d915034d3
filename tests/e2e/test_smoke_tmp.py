import socket, time, json
from tests.support.fake_anthropic import Text, Hang
from tests.support.server import processes_under
from tests.e2e.conftest import wait_until

def test_sigterm(fake, gateway, api_key, work_dir):
    fake.reply(Hang())
    body = json.dumps({"prompt": "hi"}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /api/v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer " + api_key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert wait_until(lambda: fake.message_requests() and processes_under(work_dir), 20)
        print("procs", processes_under(work_dir))
        t = time.monotonic()
        code = gateway.stop(timeout=120)
        print("stop took", time.monotonic() - t, "code", code, "killed", gateway.killed)
        print("left", processes_under(work_dir))
        sock.settimeout(1)
        try: print(sock.recv(10000))
        except Exception as e: print("recv", e)
    print(gateway.log_text())
