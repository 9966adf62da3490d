// A real OAuth 2.0 authorization server for token-http's integration tests:
// panva/oidc-provider with the client credentials grant, and one client per
// token endpoint authentication method. Test-only configuration.
//
// Usage: node server.js <dir with rsa-test-only.pem and ec-test-only.pem>
// Listens on a free port on 127.0.0.1 and prints one line when ready:
//   READY http://127.0.0.1:<port>
// Also serves GET /__test/token-requests: how many POST /token it received;
// POST /__test/refresh-token: a new grant's first refresh token for the
// rotating public client `refresh-client`, and its account;
// GET /__test/refresh-reuse?account=A: how many rotated-away refresh tokens
// of that account's grant were presented again (reuse detection);
// GET /__test/refresh-tokens?account=A: every refresh token issued to it.
// POST /__test/client-secrets {"client_id","secrets":[...]}: the secrets a
// rotating client accepts from now on; GET /__test/secret-uses?client_id=C:
// which secret each of its successful token requests used, and how many it
// refused; POST /__test/hold and /__test/release {"client_id"}, GET
// /__test/held?client_id=C: hold that client's next token request until
// released (a file rotated while a request is in flight).
// POST /token with grant_type urn:ietf:params:oauth:grant-type:token-exchange
// (client `exchange-client`): an issued access token exchanged for another.
// Exits when its standard input closes (the test process went away).
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import Provider from 'oidc-provider';
// --- certificates and mutual TLS (issue 12, items 2 and 3) ---
import { createServer as createTlsServer } from 'node:https';
import { createHash, X509Certificate } from 'node:crypto';
// --- per-caller token exchange (issue 20) ---
import { createHmac } from 'node:crypto'; // randomBytes: imported for DPoP below
// DPoP-bound exchanges: the provider's own proof validation and replay check.
import { validateDpop, checkDpopReplay } from 'oidc-provider/lib/helpers/grants.js';
// --- end per-caller token exchange ---
import { errors } from 'oidc-provider';
// --- end certificates and mutual TLS ---
// --- rotating client secrets (issue 17, item 2) ---
// The provider's own in-memory adapter (the default one), extended below.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';
// --- end rotating client secrets ---
// --- DPoP (issue 21) ---
import { randomBytes } from 'node:crypto';
// --- end DPoP ---

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

// --- certificates and mutual TLS (issue 12, items 2 and 3) ---
// A second listener, HTTPS asking for a client certificate (RFC 8705;
// server certificate and client CA from the key dir), serves the same
// provider; its base URL is printed on a second line after READY:
//   MTLS https://127.0.0.1:<port>
// It also serves POST /__test/introspect (form `token=`): the server's record
// of an access token, with its certificate binding (`cnf.x5t#S256`).
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
// --- end certificates and mutual TLS ---

const common = {
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope: 'orders.read orders.write',
};
// --- token exchange (issue 23): the on-behalf-of example of token-cache ---
// RFC 8693 for `exchange-client`: an access token this provider issued, as
// `subject_token`, is exchanged for a new client-credentials-style token.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// --- end token exchange ---
const clients = [
  // The secret has characters that RFC 6749 §2.3.1 form-encoding must carry
  // (secrets are VSCHAR, printable ASCII, per its Appendix A).
  { ...common, client_id: 'basic-client', client_secret: 'basic:secret%+/ ok~&=', token_endpoint_auth_method: 'client_secret_basic' },
  { ...common, client_id: 'post-client', client_secret: 'post-secret-value', token_endpoint_auth_method: 'client_secret_post' },
  {
    ...common,
    client_id: 'exchange-client',
    client_secret: 'exchange-secret-value',
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  // --- refresh-token rotation (issue 12, item 6) ---
  // A public client (as a CLI is) whose refresh tokens rotate on every use;
  // redeeming a rotated-away one revokes the whole grant (reuse detection).
  {
    client_id: 'refresh-client',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
    token_endpoint_auth_method: 'none',
    scope: 'orders.read orders.write',
  },
  // --- end refresh-token rotation ---
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
  // --- certificates and mutual TLS (issue 12, items 2 and 3) ---
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
  // --- end certificates and mutual TLS ---
  // --- rotating client secrets (issue 17, item 2) ---
  // private_key_jwt with only the RSA key of the self-signed client
  // certificate registered: an assertion signed with rsa-test-only.pem is
  // refused until the key file is rotated to that key.
  {
    ...common,
    client_id: 'rotating-jwt-client',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'RS256',
    jwks: { keys: [certJwk('self-signed-client-test-only.pem')] },
  },
  // --- end rotating client secrets ---
  // --- DPoP (issue 21) ---
  // Tokens bound to the client's DPoP key (RFC 9449): a token request
  // without a proof is refused.
  {
    ...common,
    client_id: 'dpop-client',
    client_secret: 'dpop-secret-value',
    token_endpoint_auth_method: 'client_secret_basic',
    dpop_bound_access_tokens: true,
  },
  // --- end DPoP ---
];

// --- per-caller token exchange (issue 20) ---
// Client `obo-client` exchanges subject tokens this server minted for
// callers (test-only HS256 JWTs: POST /__test/subjects) through RFC 8693
// (subject_token_type access_token or jwt) or the JWT bearer on-behalf-of
// grant (Entra's: assertion=, requested_token_use=on_behalf_of). It checks
// the subject's signature, expiry and revocation, and mints an
// audience-bound JWT for the same `sub` (act.sub = the client), expiring no
// later than the subject; with a DPoP proof, bound to its key (cnf.jkt). Test routes:
// POST /__test/subjects {"prefix","count","ttl"}: `count` subject tokens
// for subs `<prefix>-<i>` (ttl seconds, negative for already expired);
// POST /__test/revoke-subject {"token"}: the IdP rejects it from now on;
// GET /__test/exchanges?prefix=P: exchanges of subs starting with P
// ({total, distinct, max_per_subject, rejected}).
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const OBO_CLIENT = 'obo-client';
clients.push({
  ...common,
  client_id: OBO_CLIENT,
  client_secret: 'obo-secret-value',
  grant_types: ['client_credentials', TOKEN_EXCHANGE, JWT_BEARER],
  token_endpoint_auth_method: 'client_secret_basic',
});
const obo = (() => {
  const key = randomBytes(32);
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const sign = (claims) => {
    const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
    return `${head}.${createHmac('sha256', key).update(head).digest('base64url')}`;
  };
  const revoked = new Set();
  const exchanges = new Map(); // sub -> count
  let rejected = 0;
  let seq = 0;
  const now = () => Math.floor(Date.now() / 1000);
  const verify = (token) => {
    const parts = typeof token === 'string' ? token.split('.') : [];
    if (parts.length !== 3) return undefined;
    const expected = createHmac('sha256', key).update(`${parts[0]}.${parts[1]}`).digest('base64url');
    if (expected !== parts[2]) return undefined;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    if (claims.typ !== 'subject' || claims.exp <= now() || revoked.has(claims.jti)) return undefined;
    return claims;
  };
  const exchange = async (ctx, issuer, subjectToken) => {
    const subject = verify(subjectToken);
    if (!subject) {
      rejected += 1;
      throw new errors.InvalidGrant('the subject token is invalid, expired or revoked');
    }
    // A DPoP proof (issue 21) binds the minted token to the proof's key
    // (cnf.jkt, token_type DPoP); nonces and replays as for the other grants.
    const dPoP = await validateDpop(ctx.oidc.provider, ctx);
    if (dPoP) await checkDpopReplay(ctx.oidc.provider, ctx, dPoP, ctx.oidc.client.clientId);
    exchanges.set(subject.sub, (exchanges.get(subject.sub) ?? 0) + 1);
    const { audience, resource, scope } = ctx.oidc.params;
    const exp = Math.min(subject.exp, now() + 600);
    seq += 1;
    ctx.body = {
      access_token: sign({
        iss: issuer,
        sub: subject.sub,
        aud: audience || resource || 'default',
        scope: scope || undefined,
        azp: ctx.oidc.client.clientId,
        act: { sub: ctx.oidc.client.clientId },
        typ: 'exchanged',
        cnf: dPoP ? { jkt: dPoP.thumbprint } : undefined,
        exp,
        jti: `x${seq}`,
      }),
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: dPoP ? 'DPoP' : 'Bearer',
      expires_in: exp - now(),
      scope: scope || undefined,
    };
  };
  const tokenExchange = async (ctx, issuer) => {
    const { subject_token: token, subject_token_type: type } = ctx.oidc.params;
    if (type !== ACCESS_TOKEN_TYPE && type !== JWT_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token_type must be an access token or a JWT');
    }
    await exchange(ctx, issuer, token);
  };
  const jwtBearer = async (ctx, issuer) => {
    const { assertion, requested_token_use: use } = ctx.oidc.params;
    if (use !== 'on_behalf_of') {
      throw new errors.InvalidRequest('requested_token_use must be on_behalf_of');
    }
    await exchange(ctx, issuer, assertion);
  };
  const routes = async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const reply = (value) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(value));
      return true;
    };
    if (req.method === 'POST' && url.pathname === '/__test/subjects') {
      const { prefix, count, ttl } = await readJson(req);
      const tokens = [];
      for (let i = 0; i < count; i += 1) {
        seq += 1;
        tokens.push(sign({
          sub: `${prefix}-${i}`, azp: 'user-app', aud: 'gateway', typ: 'subject', exp: now() + (ttl ?? 3600), jti: `s${seq}`,
        }));
      }
      return reply({ tokens });
    }
    if (req.method === 'POST' && url.pathname === '/__test/revoke-subject') {
      const { token } = await readJson(req);
      revoked.add(JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).jti);
      return reply({});
    }
    if (req.method === 'GET' && url.pathname === '/__test/exchanges') {
      const prefix = url.searchParams.get('prefix') ?? '';
      let total = 0; let distinct = 0; let max = 0;
      for (const [sub, n] of exchanges) {
        if (!sub.startsWith(prefix)) continue;
        total += n; distinct += 1; max = Math.max(max, n);
      }
      return reply({ total, distinct, max_per_subject: max, rejected });
    }
    return false;
  };
  return { tokenExchange, jwtBearer, routes };
})();
// --- end per-caller token exchange ---

// --- certificates and mutual TLS (issue 12, items 2 and 3) ---
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
await new Promise((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
const tlsBase = `https://127.0.0.1:${tlsServer.address().port}`;
const peerCertificate = (ctx) => {
  const socket = ctx.req.socket;
  if (typeof socket.getPeerCertificate !== 'function') return undefined;
  const peer = socket.getPeerCertificate();
  return peer && peer.raw ? new X509Certificate(peer.raw) : undefined;
};
// Provider options for certificates and mutual TLS; `features` are merged
// into the provider's below.
const mtlsFeatures = {
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
};
const mtlsOptions = {
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none',
    'tls_client_auth', 'self_signed_tls_client_auth',
  ],
  // RFC 8705 §5: where mTLS clients send token requests.
  discovery: { mtls_endpoint_aliases: { token_endpoint: `${tlsBase}/token` } },
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
};
const introspect = (provider, req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', async () => {
    const found = await provider.ClientCredentials.find(new URLSearchParams(body).get('token'));
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(found
      ? { active: true, client_id: found.clientId, cnf: found['x5t#S256'] ? { 'x5t#S256': found['x5t#S256'] } : undefined }
      : { active: false }));
  });
};
// --- end certificates and mutual TLS ---

// --- rotating client secrets (issue 17, item 2) ---
// Clients whose accepted secrets change at runtime: `rotating-client`, and
// any `rotating-*` client id that POST /__test/client-secrets registers
// (one per test, so tests running at once do not share counters). They are
// stored in the provider's Client adapter, as dynamically registered clients
// are: `Client.find` asks the adapter at every request and caches clients by
// their metadata, so a new secret is seen at once. oidc-provider registers
// one `client_secret` per client (the newest of the list); the comparison
// its client authentication calls (`compareClientSecret`) is extended to
// accept each secret of the list, which is the overlap of a rotation.
const rotating = new Map([
  ['rotating-client', { secrets: ['rotating-secret-1'], method: 'client_secret_basic' }],
]);
const rotatingMetadata = (clientId) => {
  const entry = rotating.get(clientId);
  return entry && {
    ...common,
    client_id: clientId,
    client_secret: entry.secrets[entry.secrets.length - 1],
    token_endpoint_auth_method: entry.method,
  };
};
// The default adapter, as the provider would create it (clockTolerance 15 s,
// its default); the Client one finds rotating clients first.
const memoryAdapter = createMemoryAdapter(15);
const adapter = (name) => {
  const inner = memoryAdapter(name);
  if (name !== 'Client') return inner;
  const find = inner.find.bind(inner);
  inner.find = async (id) => rotatingMetadata(id) ?? find(id);
  return inner;
};
// Per client id: { uses: { <secret or auth method>: n }, refused: n }.
const secretUses = new Map();
const usesOf = (clientId) => {
  if (!secretUses.has(clientId)) secretUses.set(clientId, { uses: {}, refused: 0 });
  return secretUses.get(clientId);
};
// The secret a token request presented (client_secret_basic or _post).
const presentedSecret = (ctx) => {
  if (ctx.oidc.params?.client_secret) return ctx.oidc.params.client_secret;
  const header = ctx.headers.authorization ?? '';
  if (!header.startsWith('Basic ')) return undefined;
  const pair = Buffer.from(header.slice(6), 'base64').toString();
  const decode = (s) => decodeURIComponent(s.replace(/\+/g, '%20'));
  return decode(pair.slice(pair.indexOf(':') + 1));
};
const basicClientId = (req) => {
  const header = req.headers.authorization ?? '';
  if (!header.startsWith('Basic ')) return undefined;
  const pair = Buffer.from(header.slice(6), 'base64').toString();
  return decodeURIComponent(pair.slice(0, pair.indexOf(':')).replace(/\+/g, '%20'));
};
// Held token requests: client id -> { held, release, released }.
const holds = new Map();
const readJson = (req) => new Promise((resolve, reject) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => { try { resolve(JSON.parse(body)); } catch (e) { reject(e); } });
});
const rotationRoutes = async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const reply = (status, value) => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(value));
    return true;
  };
  if (req.method === 'POST' && url.pathname === '/__test/client-secrets') {
    const { client_id: clientId, secrets, method } = await readJson(req);
    if (!clientId?.startsWith('rotating-') || !Array.isArray(secrets) || secrets.length === 0) {
      return reply(400, { error: 'client_id must start with rotating- and secrets be a non-empty list' });
    }
    rotating.set(clientId, { secrets, method: method ?? 'client_secret_basic' });
    return reply(200, { client_id: clientId, secrets });
  }
  if (req.method === 'GET' && url.pathname === '/__test/secret-uses') {
    return reply(200, usesOf(url.searchParams.get('client_id')));
  }
  if (req.method === 'POST' && url.pathname === '/__test/hold') {
    const { client_id: clientId } = await readJson(req);
    let release;
    const released = new Promise((resolve) => { release = resolve; });
    holds.set(clientId, { held: false, release, released });
    return reply(200, {});
  }
  if (req.method === 'GET' && url.pathname === '/__test/held') {
    return reply(200, { held: holds.get(url.searchParams.get('client_id'))?.held === true });
  }
  if (req.method === 'POST' && url.pathname === '/__test/release') {
    const { client_id: clientId } = await readJson(req);
    holds.get(clientId)?.release();
    holds.delete(clientId);
    return reply(200, {});
  }
  return false;
};
// Holds a token request of a held client (Basic authentication) until the
// test releases it.
const holdIfAsked = async (req) => {
  if (req.method !== 'POST' || req.url !== '/token') return;
  const hold = holds.get(basicClientId(req));
  if (!hold || hold.held) return;
  hold.held = true;
  await hold.released;
};
// --- end rotating client secrets ---

// --- DPoP (issue 21) ---
// features.dPoP with nonces required on every proof and replays refused.
// The server's clock (what oidc-provider's nonces, rotated every 60 s, are
// computed from) can be moved forward by POST /__test/dpop-clock
// {"advance": seconds}, so a test spans nonce rotations without waiting
// minutes; use it only with a private server. POST /__test/dpop-introspect
// (form `token=`): the server's record of an access token (client
// credentials or refresh-token grant) and its DPoP binding (`cnf.jkt`). GET /__test/dpop-replays: how many token requests
// were refused as a replayed proof.
const dpopFeatures = {
  dPoP: {
    enabled: true,
    nonceSecret: randomBytes(32),
    requireNonce: () => true,
    allowReplay: false,
  },
};
let dpopClockOffsetMs = 0;
const realDateNow = Date.now;
Date.now = () => realDateNow() + dpopClockOffsetMs;
let dpopReplays = 0;
const dpopRoutes = async (provider, req, res) => {
  const reply = (status, value) => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(value));
    return true;
  };
  if (req.method === 'POST' && req.url === '/__test/dpop-clock') {
    const { advance } = await readJson(req);
    if (typeof advance !== 'number' || advance < 0) return reply(400, { error: 'advance: seconds >= 0' });
    dpopClockOffsetMs += advance * 1000;
    return reply(200, { offset_seconds: dpopClockOffsetMs / 1000 });
  }
  if (req.method === 'GET' && req.url === '/__test/dpop-replays') {
    return reply(200, { count: dpopReplays });
  }
  if (req.method === 'POST' && req.url === '/__test/dpop-introspect') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const token = new URLSearchParams(body).get('token');
    const found = (await provider.ClientCredentials.find(token))
      ?? (await provider.AccessToken.find(token));
    return reply(200, found
      ? { active: true, client_id: found.clientId, token_type: found.tokenType, cnf: found.jkt ? { jkt: found.jkt } : undefined }
      : { active: false });
  }
  return false;
};
// --- end DPoP ---

let tokenRequests = 0;
const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    ...mtlsOptions,
    clients,
    // Rotating client secrets (issue 17, item 2): see `rotating` above.
    adapter,
    // offline_access: enables the refresh_token grant (issue 12, item 6).
    scopes: ['orders.read', 'orders.write', 'offline_access'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      ...mtlsFeatures,
      // DPoP (issue 21): see dpopFeatures above.
      ...dpopFeatures,
    },
    // AccessToken, Grant, RefreshToken: for the refresh-token grant (issue 12, item 6).
    // Rotating clients whose id starts `rotating-short-` get 6-second
    // client-credentials tokens, so a test sees several refreshes (issue 17:
    // a secret rotated under a running sidecar).
    ttl: {
      ClientCredentials: (ctx, token, client) =>
        client?.clientId?.startsWith('rotating-short-') ? 6 : 600,
      AccessToken: 3600,
      Grant: 86400,
      RefreshToken: 86400,
    },
    // --- refresh-token rotation (issue 12, item 6) ---
    rotateRefreshToken: true,
    findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    // --- end refresh-token rotation ---
  });
  // --- token exchange (issue 23) ---
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    // Per-caller token exchange (issue 20): its own client.
    if (ctx.oidc.client.clientId === OBO_CLIENT) return obo.tokenExchange(ctx, issuer);
    const { subject_token: subjectToken, subject_token_type: subjectType, scope } = ctx.oidc.params;
    if (subjectType !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token_type must be an access token');
    }
    const subject = (await provider.ClientCredentials.find(subjectToken))
      ?? (await provider.AccessToken.find(subjectToken));
    if (!subject) {
      throw new errors.InvalidGrant('subject_token is invalid or expired');
    }
    const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope: scope || undefined });
    ctx.body = {
      access_token: await token.save(),
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  }, ['subject_token', 'subject_token_type', 'scope', 'requested_token_type', 'audience', 'actor_token', 'actor_token_type', 'resource']);
  // --- end token exchange ---
  // --- per-caller token exchange (issue 20) ---
  provider.registerGrantType(JWT_BEARER, (ctx) => obo.jwtBearer(ctx, issuer), ['assertion', 'requested_token_use', 'scope', 'audience', 'resource']);
  // --- end per-caller token exchange ---
  // --- refresh-token rotation (issue 12, item 6) ---
  // Counts, per account (one per minted grant), rotated-away refresh
  // tokens presented again (each one revokes its grant).
  const refreshReuse = new Map();
  provider.on('grant.error', (ctx, err) => {
    const account = ctx.oidc?.entities?.RefreshToken?.accountId;
    if (err.error_detail === 'refresh token already used' && account) {
      refreshReuse.set(account, (refreshReuse.get(account) ?? 0) + 1);
    }
  });
  // Every refresh token issued, per account, so tests can check that none
  // of them shows up in logs or unencrypted storage.
  const refreshIssued = new Map();
  provider.on('refresh_token.saved', (token) => {
    const list = refreshIssued.get(token.accountId) ?? [];
    list.push(token.jti);
    refreshIssued.set(token.accountId, list);
  });
  // A first refresh token for 'refresh-client' without a browser: the grant
  // and refresh token an authorization-code flow with offline_access would
  // leave behind, minted directly (test only).
  const mintRefreshToken = async () => {
    const client = await provider.Client.find('refresh-client');
    const accountId = `user-${Math.random().toString(36).slice(2)}`;
    const grant = new provider.Grant({ accountId, clientId: client.clientId });
    grant.addOIDCScope('offline_access orders.read orders.write');
    const grantId = await grant.save();
    const refreshToken = new provider.RefreshToken({
      accountId,
      client,
      grantId,
      gty: 'authorization_code',
      scope: 'offline_access orders.read orders.write',
      expiresWithSession: false,
    });
    return { refresh_token: await refreshToken.save(), account: accountId };
  };
  const testRoutes = async (req, res) => {
    if (req.method === 'POST' && req.url === '/__test/refresh-token') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(await mintRefreshToken()));
      return true;
    }
    if (req.method === 'GET' && req.url.startsWith('/__test/refresh-reuse?account=')) {
      const account = decodeURIComponent(req.url.slice('/__test/refresh-reuse?account='.length));
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ count: refreshReuse.get(account) ?? 0 }));
      return true;
    }
    if (req.method === 'GET' && req.url.startsWith('/__test/refresh-tokens?account=')) {
      const account = decodeURIComponent(req.url.slice('/__test/refresh-tokens?account='.length));
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ refresh_tokens: refreshIssued.get(account) ?? [] }));
      return true;
    }
    return false;
  };
  // --- end refresh-token rotation ---
  // --- rotating client secrets (issue 17, item 2) ---
  const compareClientSecret = provider.Client.prototype.compareClientSecret;
  provider.Client.prototype.compareClientSecret = function compare(actual) {
    const entry = rotating.get(this.clientId);
    if (!entry) return compareClientSecret.call(this, actual);
    return entry.secrets.some((clientSecret) => compareClientSecret.call({ clientSecret }, actual));
  };
  provider.on('grant.success', (ctx) => {
    const clientId = ctx.oidc.client?.clientId;
    if (!clientId?.startsWith('rotating-')) return;
    const used = presentedSecret(ctx) ?? ctx.oidc.client.clientAuthMethod;
    const counts = usesOf(clientId).uses;
    counts[used] = (counts[used] ?? 0) + 1;
  });
  provider.on('grant.error', (ctx, err) => {
    const clientId = ctx.oidc?.client?.clientId;
    if (clientId?.startsWith('rotating-') && err.error === 'invalid_client') {
      usesOf(clientId).refused += 1;
    }
  });
  // --- end rotating client secrets ---
  // --- DPoP (issue 21) ---
  provider.on('grant.error', (ctx, err) => {
    if (/Replay detected/.test(`${err.error_detail} ${err.error_description}`)) dpopReplays += 1;
  });
  // --- end DPoP ---
  const handle = provider.callback();
  server.on('request', async (req, res) => {
    if (await testRoutes(req, res)) return;
    if (await rotationRoutes(req, res)) return;
    if (await obo.routes(req, res)) return; // per-caller token exchange (issue 20)
    if (await dpopRoutes(provider, req, res)) return;
    await holdIfAsked(req);
    if (req.method === 'GET' && req.url === '/__test/token-requests') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ count: tokenRequests }));
      return;
    }
    if (req.method === 'POST' && req.url === '/token') tokenRequests += 1;
    handle(req, res);
  });
  tlsServer.on('request', (req, res) => {
    if (req.method === 'POST' && req.url === '/__test/introspect') {
      introspect(provider, req, res);
      return;
    }
    server.emit('request', req, res);
  });
  // Both ready lines in one write: a harness that reads only the first and
  // closes the pipe never makes a second write fail.
  process.stdout.write(`READY ${issuer}\nMTLS ${tlsBase}\n`);
});
// A test harness that stopped reading is no reason to stop serving.
process.stdout.on('error', () => {});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
