#!/usr/bin/env python3
"""A stand-in for a pod behind a Cilium service, for the meshgw lab (python3 stdlib only).

TCP 8080 (IPv4 and IPv6): a connection whose first line is an HTTP request gets a minimal
HTTP/1.0 response with the body "<name>\\n" and is closed. Any other line ("ping\\n", say) is
answered with "<name>\\n", and the connection stays open for more lines, so a client can hold one
connection and see that it stays with the same backend.

UDP 5353 (IPv4 and IPv6): every datagram is answered with "<name>".
"""

import argparse
import logging
import os
import socket
import sys
import threading

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
MAX_LINE = 8192


def dual_stack_socket(kind, port):
    """A socket bound to [::]:port that also accepts IPv4 (as v4-mapped addresses)."""
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


def peer_str(addr):
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_conn(conn, addr, name):
    body = (name + "\n").encode()
    peer = peer_str(addr)
    lines = 0
    try:
        conn.settimeout(300)
        f = conn.makefile("rb")
        while True:
            line = f.readline(MAX_LINE)
            if not line:
                break
            lines += 1
            if lines == 1 and line.startswith(HTTP_METHODS):
                # Read (and ignore) the request headers, then answer and close.
                while True:
                    h = f.readline(MAX_LINE)
                    if not h or h in (b"\r\n", b"\n"):
                        break
                head = (
                    "HTTP/1.0 200 OK\r\n"
                    "Content-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "Connection: close\r\n"
                    "\r\n"
                ).encode()
                conn.sendall(head + body)
                logging.info("tcp %s http", peer)
                return
            conn.sendall(body)
        logging.info("tcp %s lines=%d", peer, lines)
    except OSError as e:
        logging.info("tcp %s error after %d lines: %s", peer, lines, e)
    finally:
        try:
            conn.close()
        except OSError:
            pass


def tcp_loop(srv, name):
    while True:
        conn, addr = srv.accept()
        t = threading.Thread(target=serve_conn, args=(conn, addr, name), daemon=True)
        t.start()


def udp_loop(srv, name):
    reply = name.encode()
    while True:
        data, addr = srv.recvfrom(65535)
        srv.sendto(reply, addr)
        logging.info("udp %s %d bytes", peer_str(addr), len(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the answer, e.g. pod-1")
    ap.add_argument("--tcp-port", type=int, default=8080)
    ap.add_argument("--udp-port", type=int, default=5353)
    ap.add_argument("--log", help="log file (default: stderr)")
    ap.add_argument("--pidfile", help="write this process's id here once listening")
    args = ap.parse_args()

    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format=f"%(asctime)s {args.name} %(message)s",
    )
    # Bind both sockets before reporting readiness: a bind error ends the process.
    tcp_sock = dual_stack_socket(socket.SOCK_STREAM, args.tcp_port)
    tcp_sock.listen(1024)
    udp_sock = dual_stack_socket(socket.SOCK_DGRAM, args.udp_port)
    tcp = threading.Thread(target=tcp_loop, args=(tcp_sock, args.name), daemon=True)
    udp = threading.Thread(target=udp_loop, args=(udp_sock, args.name), daemon=True)
    tcp.start()
    udp.start()
    if args.pidfile:
        with open(args.pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(args.pidfile + ".tmp", args.pidfile)
    logging.info("listening on tcp %d and udp %d", args.tcp_port, args.udp_port)
    try:
        # Either loop ending on an error ends the server.
        while tcp.is_alive() and udp.is_alive():
            tcp.join(1)
    except KeyboardInterrupt:
        pass
    return 1 if not (tcp.is_alive() and udp.is_alive()) else 0


if __name__ == "__main__":
    sys.exit(main())
