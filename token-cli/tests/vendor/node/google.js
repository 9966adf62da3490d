// Application Default Credentials as every `@google-cloud/*` client gets
// them: `new GoogleAuth()` from google-auth-library, unmodified, against
// the metadata server that GCE_METADATA_HOST names (`tokencache serve`).
//
//     node google.js [SCOPE...]
//
// Prints the access token, the project id, the account's e-mail and the
// universe domain, one per line. With scopes, the token is asked for them
// (`?scopes=a,b`), as Google's API clients do.
const { GoogleAuth } = require('google-auth-library');

async function main() {
  const scopes = process.argv.slice(2);
  const auth = scopes.length > 0 ? new GoogleAuth({ scopes }) : new GoogleAuth();
  const token = await auth.getAccessToken();
  const project = await auth.getProjectId();
  const credentials = await auth.getCredentials();
  console.log(token);
  console.log(project);
  console.log(credentials.client_email);
  console.log(credentials.universe_domain);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
