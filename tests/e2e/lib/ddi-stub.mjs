// A local stand-in for an Eclipse hawkBit server's Direct Device Integration API (hawkBit itself
// is not packaged in Debian; the issue asks for a local DDI stub). It speaks the documented
// resources for one tenant: poll, configData, deploymentBase + feedback, artifact download,
// cancelAction + feedback; it checks the target token and records what the box sent.
import { createServer } from "node:http";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename } from "node:path";

export async function startDdiStub({ tenant = "DEFAULT", token }) {
  const stub = { requests: [], feedback: [], cancelFeedback: [], configData: [], action: null, cancel: null, askConfig: true };
  const send = (res, status, body) => {
    res.writeHead(status, { "content-type": "application/hal+json" });
    res.end(body === undefined ? "" : JSON.stringify(body));
  };
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const path = new URL(req.url, "http://stub").pathname;
      stub.requests.push(`${req.method} ${path}`);
      if (req.headers.authorization !== `TargetToken ${token}`) return send(res, 401, { message: "target token required" });
      const match = path.match(new RegExp(`^/${tenant}/controller/v1/([^/]+)(/.*)?$`));
      if (!match) return send(res, 404, { message: "no such resource" });
      const [, controller, rest = ""] = match;
      stub.controller = controller;
      const base = `${stub.url}/${tenant}/controller/v1/${controller}`;
      const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : null;
      const action = stub.action;
      if (req.method === "GET" && rest === "") {
        const links = {};
        if (stub.askConfig) links.configData = { href: `${base}/configData` };
        if (action && !action.closed) links.deploymentBase = { href: `${base}/deploymentBase/${action.id}?c=-2129030598` };
        if (stub.cancel) links.cancelAction = { href: `${base}/cancelAction/${stub.cancel.id}` };
        return send(res, 200, { config: { polling: { sleep: "00:00:01" } }, _links: links });
      }
      if (req.method === "PUT" && rest === "/configData") {
        stub.configData.push(body);
        stub.askConfig = false;
        return send(res, 200);
      }
      if (action && req.method === "GET" && rest === `/deploymentBase/${action.id}`) {
        return send(res, 200, {
          id: action.id,
          deployment: { download: "forced", update: "forced", chunks: [{ part: "os", version: action.version, name: "branchgate",
            artifacts: [{ filename: action.filename, size: action.bytes.length, hashes: action.hashes,
              _links: { "download-http": { href: `${base}/softwaremodules/1/artifacts/${action.filename}` } } }] }] },
        });
      }
      if (action && req.method === "GET" && rest === `/softwaremodules/1/artifacts/${action.filename}`) {
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": action.bytes.length });
        return res.end(action.bytes);
      }
      const feedback = rest.match(/^\/deploymentBase\/([^/]+)\/feedback$/);
      if (req.method === "POST" && feedback) {
        stub.feedback.push({ action: feedback[1], ...body.status });
        if (action && feedback[1] === action.id && body.status.execution === "closed") action.closed = body.status.result.finished;
        return send(res, 200);
      }
      if (stub.cancel && req.method === "GET" && rest === `/cancelAction/${stub.cancel.id}`) {
        return send(res, 200, { id: stub.cancel.id, cancelAction: { stopId: stub.cancel.stopId } });
      }
      const cancelled = rest.match(/^\/cancelAction\/([^/]+)\/feedback$/);
      if (req.method === "POST" && cancelled) {
        stub.cancelFeedback.push({ cancel: cancelled[1], ...body.status });
        stub.cancel = null;
        return send(res, 200);
      }
      return send(res, 404, { message: `no such resource ${path}` });
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  stub.url = `http://127.0.0.1:${server.address().port}`;
  let next = 1;
  /** Offers `file` as a new action; `hashes` overrides what the server announces. */
  stub.deploy = (file, version, hashes) => {
    const bytes = readFileSync(file);
    const digest = (name) => createHash(name).update(bytes).digest("hex");
    stub.action = { id: String(next++), version, filename: basename(file), bytes, closed: false,
      hashes: { sha1: digest("sha1"), md5: digest("md5"), sha256: digest("sha256"), ...hashes } };
    return stub.action;
  };
  stub.feedbackOf = (id) => stub.feedback.filter((f) => f.action === id);
  stub.close = () => new Promise((resolve) => server.close(resolve));
  return stub;
}
