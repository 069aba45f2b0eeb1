# The restart benchmark's traffic, run inside the lab's pods with python3 (installed by setup-host).
#   server PORT                          an echo server
#   client VIP PORT CONNECTIONS SECONDS  that many connections, each a request every 10 ms for that
#                                        long; prints two JSON lines: {"connected": N} once every
#                                        connection is open (or failed to open), then per connection
#                                        whether it lived to the end and the longest time it went
#                                        without a reply.
import asyncio, json, sys, time

async def serve(port):
    async def echo(reader, writer):
        try:
            while data := await reader.read(64):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
    server = await asyncio.start_server(echo, "0.0.0.0", port)
    async with server:
        await server.serve_forever()

async def connect(vip, port):
    try:
        return await asyncio.wait_for(asyncio.open_connection(vip, port), timeout=10)
    except Exception as error:
        return error

async def exchange(connection, seconds):
    if isinstance(connection, Exception):
        return {"kept": False, "max_gap_ms": 0.0, "error": type(connection).__name__}
    reader, writer = connection
    end = time.monotonic() + seconds
    last = time.monotonic()
    max_gap = 0.0
    try:
        while time.monotonic() < end:
            writer.write(b"ping\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readexactly(5), timeout=30)
            now = time.monotonic()
            max_gap = max(max_gap, now - last)
            last = now
            assert reply == b"ping\n"
            await asyncio.sleep(0.01)
        writer.close()
        return {"kept": True, "max_gap_ms": max_gap * 1000}
    except Exception as error:
        return {"kept": False, "max_gap_ms": max(max_gap, time.monotonic() - last) * 1000,
                "error": type(error).__name__}

async def clients(vip, port, n, seconds):
    connections = await asyncio.gather(*(connect(vip, port) for _ in range(n)))
    opened = sum(not isinstance(c, Exception) for c in connections)
    print(json.dumps({"connected": opened}), flush=True)
    results = await asyncio.gather(*(exchange(c, seconds) for c in connections))
    print(json.dumps(results), flush=True)

if sys.argv[1] == "server":
    asyncio.run(serve(int(sys.argv[2])))
else:
    asyncio.run(clients(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
