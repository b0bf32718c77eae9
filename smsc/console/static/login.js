// The login page: keep where the user was going; say when a token was refused.
const params = new URLSearchParams(location.search);
document.getElementById('next').value = params.get('next') || '';
if (params.has('failed')) document.getElementById('failed').hidden = false;
