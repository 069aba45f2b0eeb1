# The demo's failover traffic, run inside x-wing's pod with python3: a new TCP connection to
#   HOST PORT every 1/RATE seconds, each a plain HTTP/1.0 GET, on its own thread so that a slow answer
#   never delays the next request. One JSON line per request once it is over: when it was issued
#   (Unix ms), the body it got (the answering cluster's name) or null when it failed, and then why:
#   "refused", "reset", "connect timeout" or "answer timeout" (2 s each), or "bad answer". On SIGTERM
#   it stops issuing, waits for the requests in flight and exits.
import json, signal, socket, sys, threading, time

host, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lock = threading.Lock()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())

def request(issued_ms):
    answer, error, connected = None, None, False
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            connected = True
            s.settimeout(2)
            s.sendall(b"GET / HTTP/1.0\r\nHost: rebel-base\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.0 200") and body.strip():
                answer = body.decode(errors="replace").strip()
            else:
                error = "bad answer"
    except ConnectionRefusedError:
        error = "refused"
    except ConnectionResetError:
        error = "reset"
    except TimeoutError:
        error = "answer timeout" if connected else "connect timeout"
    except OSError as e:
        error = e.strerror or type(e).__name__
    line = {"issued_ms": issued_ms, "answer": answer, "error": error}
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
