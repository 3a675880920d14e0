// A loopback HTTP proxy that adds `Authorization: Bearer $AIRLOCK_CONFORMANCE_TOKEN`
// to every request it forwards to $AIRLOCK_CONFORMANCE_UPSTREAM (host:port).
// The conformance suite (@modelcontextprotocol/conformance) has no option to
// send a token and Airlock's /mcp takes none without one. Everything else —
// method, path, every other header (Host and Origin included, so the
// suite's DNS rebinding checks reach Airlock as sent), the body and the
// streamed response — passes through unchanged. Prints `listening PORT`.
import http from 'node:http';

const upstream = process.env.AIRLOCK_CONFORMANCE_UPSTREAM;
const token = process.env.AIRLOCK_CONFORMANCE_TOKEN;
if (!upstream || !token) {
    console.error('bearer-proxy: AIRLOCK_CONFORMANCE_UPSTREAM and AIRLOCK_CONFORMANCE_TOKEN are required');
    process.exit(2);
}
const [host, port] = [upstream.slice(0, upstream.lastIndexOf(':')), Number(upstream.slice(upstream.lastIndexOf(':') + 1))];

const server = http.createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` };
    const forward = http.request({ host, port, method: req.method, path: req.url, headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.rawHeaders);
        answer.pipe(res);
    });
    forward.on('error', (error) => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`bearer-proxy: ${error.message}`);
    });
    // The suite went away mid-stream (an SSE stream it is done with).
    res.on('close', () => { if (!res.writableFinished) forward.destroy(); });
    req.pipe(forward);
});
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
