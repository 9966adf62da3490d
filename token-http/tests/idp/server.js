// A real OAuth 2.0 authorization server for token-http's integration tests:
// panva/oidc-provider with the client credentials grant, and one client per
// token endpoint authentication method. Test-only configuration.
//
// Usage: node server.js <dir of tests/keys>
// Listens on two free ports on 127.0.0.1: plain HTTP (the issuer) and HTTPS
// that asks for a client certificate (mutual TLS, RFC 8705; server
// certificate and client CA from the key dir), both serving the same
// provider. Prints one line when ready:
//   READY http://127.0.0.1:<port> https://127.0.0.1:<tls port>
// Also serves GET /__test/token-requests: how many POST /token it received,
// and POST /__test/introspect (form `token=`): the RFC 7662 introspection
// of an access token (its `cnf` shows a certificate binding).
// Exits when its standard input closes (the test process went away).
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import Provider, { errors } from 'oidc-provider';

const keyDir = process.argv[2];
if (!keyDir) {
  console.error('usage: node server.js <key dir>');
  process.exit(2);
}
const publicJwk = (file, kid) => ({
  ...createPublicKey(readFileSync(join(keyDir, file))).export({ format: 'jwk' }),
  kid,
  use: 'sig',
});

// PEM files of tests/keys: certificates (leaf first) and their keys.
const pemBlocks = (file, label) => {
  const text = readFileSync(join(keyDir, file), 'utf8');
  const re = new RegExp(`-----BEGIN ${label}-----[^-]+-----END ${label}-----`, 'g');
  return text.match(re) || [];
};
const derOf = (pem) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
const thumbprint = (pem, alg) => createHash(alg).update(derOf(pem)).digest('base64url');
const certJwk = (file) => {
  const chain = pemBlocks(file, 'CERTIFICATE');
  return {
    ...new X509Certificate(chain[0]).publicKey.export({ format: 'jwk' }),
    use: 'sig',
    x5c: chain.map((c) => derOf(c).toString('base64')),
  };
};
// The certificate that `cert-client` registers: private_key_jwt assertions
// must name it by `x5t#S256` (and, for `cert-x5c-client`, carry `x5t` and
// the whole chain in `x5c`), as IdPs that register certificates require.
const jwtCert = pemBlocks('rsa-test-only.crt', 'CERTIFICATE');
const expectedHeaders = {
  'cert-client': { 'x5t#S256': thumbprint(jwtCert[0], 'sha256') },
  'cert-x5c-client': {
    'x5t#S256': thumbprint(jwtCert[0], 'sha256'),
    x5t: thumbprint(jwtCert[0], 'sha1'),
    x5c: JSON.stringify(jwtCert.map((c) => derOf(c).toString('base64'))),
  },
};

const common = {
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: 'orders.read orders.write',
};
const clients = [
  // The secret has characters that RFC 6749 §2.3.1 form-encoding must carry
  // (secrets are VSCHAR, printable ASCII, per its Appendix A).
  { ...common, client_id: 'basic-client', client_secret: 'basic:secret%+/ ok~&=', token_endpoint_auth_method: 'client_secret_basic' },
  { ...common, client_id: 'post-client', client_secret: 'post-secret-value', token_endpoint_auth_method: 'client_secret_post' },
  {
    ...common,
    client_id: 'jwt-rs-client',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [publicJwk('rsa-test-only.pem', 'rsa-1')] },
  },
  {
    ...common,
    client_id: 'jwt-es-client',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [publicJwk('ec-test-only.pem', 'ec-1')] },
  },
  ...['cert-client', 'cert-x5c-client'].map((client_id) => ({
    ...common,
    client_id,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [certJwk('rsa-test-only.crt')] },
  })),
  // RFC 8705: a CA-issued certificate registered by subject, and a
  // self-signed one registered in the JWK set; tokens bound to them.
  {
    ...common,
    client_id: 'mtls-client',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: 'CN=mtls-client',
    tls_client_certificate_bound_access_tokens: true,
  },
  {
    ...common,
    client_id: 'self-signed-client',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    jwks: { keys: [certJwk('self-signed-client-test-only.pem')] },
    tls_client_certificate_bound_access_tokens: true,
  },
];

let tokenRequests = 0;
const server = createServer();
const tlsServer = createTlsServer({
  cert: pemBlocks('server-test-only.pem', 'CERTIFICATE').join('\n'),
  key: pemBlocks('server-test-only.pem', 'PRIVATE KEY')[0],
  ca: readFileSync(join(keyDir, 'ca-test-only.crt')),
  // Ask for a certificate, accept any: the provider decides per client
  // (tls_client_auth needs a CA-verified one, self-signed ones are matched
  // by thumbprint).
  requestCert: true,
  rejectUnauthorized: false,
});
const listen = (s) => new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
await Promise.all([listen(server), listen(tlsServer)]);
const issuer = `http://127.0.0.1:${server.address().port}`;
const tlsBase = `https://127.0.0.1:${tlsServer.address().port}`;
const peerCertificate = (ctx) => {
  const socket = ctx.req.socket;
  if (typeof socket.getPeerCertificate !== 'function') return undefined;
  const peer = socket.getPeerCertificate();
  return peer && peer.raw ? new X509Certificate(peer.raw) : undefined;
};
const provider = new Provider(issuer, {
  clients,
  scopes: ['orders.read', 'orders.write'],
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none',
    'tls_client_auth', 'self_signed_tls_client_auth',
  ],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        if (property !== 'tls_client_auth_subject_dn') return false;
        const cert = peerCertificate(ctx);
        return !!cert && cert.subject.replace(/\n/g, ',') === expected;
      },
    },
  },
  async assertJwtClientAuthClaimsAndHeader(ctx, claims, header, client) {
    const expected = expectedHeaders[client.clientId];
    if (!expected) return;
    for (const [name, value] of Object.entries(expected)) {
      const sent = name === 'x5c' ? JSON.stringify(header.x5c) : header[name];
      if (sent !== value) {
        throw new errors.InvalidClientAuth(`the assertion header's ${name} does not name the registered certificate`);
      }
    }
  },
  // RFC 8705 §5: where mTLS clients send token requests.
  discovery: { mtls_endpoint_aliases: { token_endpoint: `${tlsBase}/token` } },
  ttl: { ClientCredentials: 600 },
});
const handle = provider.callback();
const route = (req, res) => {
  if (req.method === 'GET' && req.url === '/__test/token-requests') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ count: tokenRequests }));
    return;
  }
  if (req.method === 'POST' && req.url === '/__test/introspect') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      const token = new URLSearchParams(body).get('token');
      const found = await provider.ClientCredentials.find(token);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(found
        ? { active: true, client_id: found.clientId, cnf: found['x5t#S256'] ? { 'x5t#S256': found['x5t#S256'] } : undefined }
        : { active: false }));
    });
    return;
  }
  if (req.method === 'POST' && req.url === '/token') tokenRequests += 1;
  handle(req, res);
};
server.on('request', route);
tlsServer.on('request', route);
console.log(`READY ${issuer} ${tlsBase}`);

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
