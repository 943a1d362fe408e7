(function(){
function openTo(id){var e=id&&document.getElementById(id);for(;e;e=e.parentElement){if(e.tagName==='DETAILS')e.open=true;}}
document.addEventListener('click',function(ev){var a=ev.target.closest('a[href^="#"]');if(a)openTo(a.getAttribute('href').slice(1));});
openTo(location.hash.slice(1));
var s=document.querySelectorAll('select.filter');
function f(){var n=0;document.querySelectorAll('.card').forEach(function(c){var ok=true;
s.forEach(function(t){if(t.value&&(c.dataset[t.dataset.key]||'').split(' ').indexOf(t.value)<0)ok=false;});
c.hidden=!ok;if(ok)n++;});var o=document.getElementById('gallery-count');if(o)o.textContent=n;}
s.forEach(function(t){t.onchange=f;});
})();
