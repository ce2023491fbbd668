// One pixel -> one disc oriented by its normal (a quad; the fragment shader cuts the disc).
layout(points) in;
layout(triangle_strip, max_vertices = 4) out;

uniform mat4 m_proj;

in vec3 v_pos[];
in vec3 v_normal[];
in vec3 v_color[];
in float v_radius[];
in float v_valid[];

out vec3 f_pos;
out vec3 f_normal;
out vec3 f_color;
out vec2 f_local;

void main() {
    if (v_valid[0] < 0.5) return;
    vec3 n = v_normal[0];
    vec3 helper = abs(n.x) < 0.9 ? vec3(1.0, 0.0, 0.0) : vec3(0.0, 1.0, 0.0);
    vec3 u = normalize(cross(n, helper));
    vec3 v = cross(n, u);
    float r = v_radius[0];
    vec2 corners[4] = vec2[4](vec2(-1.0, -1.0), vec2(1.0, -1.0), vec2(-1.0, 1.0), vec2(1.0, 1.0));
    for (int k = 0; k < 4; ++k) {
        vec3 p = v_pos[0] + r * (corners[k].x * u + corners[k].y * v);
        f_pos = p;
        f_normal = n;
        f_color = v_color[0];
        f_local = corners[k];
        gl_Position = m_proj * vec4(p, 1.0);
        EmitVertex();
    }
    EndPrimitive();
}
