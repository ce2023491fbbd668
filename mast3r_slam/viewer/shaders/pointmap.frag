// Round points / discs with optional headlight Phong shading.
#ifdef SURFEL
in vec3 f_pos;
in vec3 f_normal;
in vec3 f_color;
in vec2 f_local;
#else
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_color;
#define f_pos v_pos
#define f_normal v_normal
#define f_color v_color
uniform float point_size;
#endif

uniform int lighting;

out vec4 frag_color;

void main() {
#ifdef SURFEL
    vec2 l = f_local;
#else
    vec2 l = point_size >= 3.0 ? gl_PointCoord * 2.0 - 1.0 : vec2(0.0);
#endif
    if (dot(l, l) > 1.0) discard;
    vec3 col = f_color;
    if (lighting != 0) {
        vec3 N = normalize(f_normal);
        vec3 V = normalize(-f_pos);
        vec3 L = V;  // headlight
        float diff = max(dot(N, L), 0.0);
        float spec = pow(max(dot(reflect(-L, N), V), 0.0), 32.0);
        col = col * (0.45 + 0.55 * diff) + 0.15 * spec;
    }
    frag_color = vec4(col, 1.0);
}
