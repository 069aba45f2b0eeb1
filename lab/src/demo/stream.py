# The demo's failover traffic, run inside x-wing's pod with python3: a new TCP connection to
#   HOST PORT every 1/RATE seconds, each a plain HTTP/1.0 GET, on its own thread so that a slow answer
#   never delays the next request. One JSON line per request once it is over: when it was issued
#   (Unix ms), the body it got (the answering cluster's name) or null when it failed, and then why:
#   "refused", "reset", "connect timeout" or "answer timeout" (2 s each), or "bad answer". On SIGTERM
#   it stops issuing, waits for the requests in flight and exits. Each line also carries when the
#   request was over (Unix ms) and its local port, so a failure can be placed on the failover's
#   timeline and found in a capture or a flow log.
import errno, json, os, select, signal, socket, sys, threading, time

host, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())

def connect():
    """A connected socket and its local port, or an error and the port it had: the connect is
    started without blocking so that the port is known even when the connect fails, and the kernel
    chooses it as for any connect."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    started = s.connect_ex((host, port))
    local_port = s.getsockname()[1]
    if started not in (0, errno.EINPROGRESS):
        s.close()
        return None, local_port, os.strerror(started)
    if not select.select([], [s], [], 2)[1]:
        s.close()
        return None, local_port, "connect timeout"
    failed = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if failed:
        s.close()
        why = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}
        return None, local_port, why.get(failed, os.strerror(failed))
    s.setblocking(True)
    s.settimeout(2)
    return s, local_port, None

def request(issued_ms):
    answer = None
    s, local_port, error = connect()
    if s is not None:
        try:
            with s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: rebel-base\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.0 200") and body.strip():
                    answer = body.decode(errors="replace").strip()
                else:
                    error = "bad answer"
        except ConnectionResetError:
            error = "reset"
        except TimeoutError:
            error = "answer timeout"
        except OSError as e:
            error = e.strerror or type(e).__name__
    line = {"issued_ms": issued_ms, "answer": answer, "error": error,
            "over_ms": int(time.time() * 1000), "port": local_port}
    with lock:
        print(json.dumps(line), flush=True)

threads = []
period = 1.0 / rate
next_at = time.monotonic()
while not stopping.is_set():
    thread = threading.Thread(target=request, args=(int(time.time() * 1000),))
    thread.start()
    threads.append(thread)
    next_at += period
    stopping.wait(max(0.0, next_at - time.monotonic()))
for thread in threads:
    thread.join()
