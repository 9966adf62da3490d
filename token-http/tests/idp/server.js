// A real OAuth 2.0 authorization server for token-http's integration tests:
// panva/oidc-provider with the client credentials grant, and one client per
// token endpoint authentication method. Test-only configuration.
//
// Usage: node server.js <dir with rsa-test-only.pem and ec-test-only.pem>
// Listens on a free port on 127.0.0.1 and prints one line when ready:
//   READY http://127.0.0.1:<port>
// Also serves GET /__test/token-requests: how many POST /token it received.
// Exits when its standard input closes (the test process went away).
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import Provider from 'oidc-provider';

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
];

let tokenRequests = 0;
const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients,
    scopes: ['orders.read', 'orders.write'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
    },
    ttl: { ClientCredentials: 600 },
  });
  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'GET' && req.url === '/__test/token-requests') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ count: tokenRequests }));
      return;
    }
    if (req.method === 'POST' && req.url === '/token') tokenRequests += 1;
    handle(req, res);
  });
  console.log(`READY ${issuer}`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
