// The sign-in page: a plain form (POST /login sets the session cookie); this
// only says so when the server sent us back here after a refused token.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  if (params.has("error") || params.has("refused")) document.getElementById("login-error").hidden = false;
})();
